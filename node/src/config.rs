//! paddockd's configuration: flags, `PADDOCK_*` environment variables and a TOML file, with
//! flags and environment winning over the file, and the file over the defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use paddock_raft::StorageKind;
use serde::{Deserialize, Serialize};

/// paddockd — the Paddock daemon. Run one on every host; started with the same --peers list,
/// the daemons form a Raft cluster by themselves.
///
/// Each key is declared once, here: clap reads it from a flag or its environment variable,
/// serde from the TOML file (the same name in snake_case), and [`Flags::over`] lays the flags
/// over the file without naming any key.
#[derive(Debug, Default, Parser, Serialize, Deserialize)]
#[command(name = "paddockd", version, about, long_about = None)]
#[serde(default, deny_unknown_fields)]
pub struct Flags {
    /// TOML file with the same keys as the flags (snake_case: data_dir, listen, peers, ...).
    #[arg(long, env = "PADDOCK_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// This node's name: its stable identity in the cluster (a-z, 0-9, '-', '_').
    #[arg(long, env = "PADDOCK_NAME")]
    pub name: Option<String>,
    /// Directory for the Raft log, vote, snapshots and the node identity.
    #[arg(long, env = "PADDOCK_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to serve gRPC (Raft and clients, mutual TLS) on, host:port.
    #[arg(long, env = "PADDOCK_LISTEN")]
    pub listen: Option<String>,
    /// Address other nodes and clients use to reach this node [default: this node's --peers
    /// entry, else --listen].
    #[arg(long, env = "PADDOCK_ADVERTISE")]
    pub advertise: Option<String>,
    /// Address for plain-HTTP /healthz, /readyz and /metrics (read-only, no cluster data).
    #[arg(long, env = "PADDOCK_HTTP")]
    pub http: Option<String>,
    /// Address for the HTTPS API (/api/v1), the dashboard (/ui) and /metrics, host:port:
    /// TLS with the node certificate; callers authenticate per request (token or client
    /// certificate).
    #[arg(long, env = "PADDOCK_API")]
    pub api: Option<String>,
    /// Directory with ca.crt and this node's NAME.crt / NAME.key (see `paddock certs`).
    #[arg(long, env = "PADDOCK_CERTS_DIR")]
    pub certs_dir: Option<PathBuf>,
    /// Initial members, the same on every node: n1=host:port,n2=host:port,n3=host:port (in
    /// the file also a table: [peers] n1 = "host:port").
    #[arg(long, env = "PADDOCK_PEERS")]
    #[serde(deserialize_with = "text_or_table")]
    pub peers: Option<String>,
    /// Join a running cluster through any of its members (host:port).
    #[arg(long, env = "PADDOCK_JOIN", conflicts_with = "peers")]
    pub join: Option<String>,
    /// Dial peer NAME at HOST:PORT instead of its advertised address (NAT, proxies, the chaos
    /// harness); repeatable: --route n2=10.1.0.2:7001.
    #[arg(long = "route", env = "PADDOCK_ROUTES", value_delimiter = ',')]
    #[serde(deserialize_with = "list_or_table")]
    pub routes: Vec<String>,
    /// Storage engine of the Raft log: redb (default) or sled.
    #[arg(long, env = "PADDOCK_STORAGE")]
    pub storage: Option<String>,
    /// Leader heartbeat interval in milliseconds [default: 50].
    #[arg(long, env = "PADDOCK_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Smallest election timeout in milliseconds [default: 200].
    #[arg(long, env = "PADDOCK_ELECTION_MIN_MS")]
    pub election_min_ms: Option<u64>,
    /// Largest election timeout in milliseconds [default: 400].
    #[arg(long, env = "PADDOCK_ELECTION_MAX_MS")]
    pub election_max_ms: Option<u64>,
    /// Build a snapshot after this many log entries since the last one [default: 10000].
    #[arg(long, env = "PADDOCK_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// Log entries kept after a snapshot, for slow followers [default: 1000].
    #[arg(long, env = "PADDOCK_KEEP_LOGS")]
    pub keep_logs: Option<u64>,
    /// Log filter (tracing EnvFilter syntax) [default: info,openraft=warn].
    #[arg(long, env = "PADDOCK_LOG")]
    pub log: Option<String>,
    /// Hypervisor driver: memvm (embedded, default) or libvirt (needs the `libvirt` build).
    #[arg(long, env = "PADDOCK_DRIVER")]
    pub driver: Option<String>,
    /// Fencing: `none` (VMs are stopped by the agent and memvm guests at the end of the lease)
    /// or `watchdog` (also feed --watchdog-device only while the lease is valid, so a hung
    /// paddockd resets the host) [default: none].
    #[arg(long, env = "PADDOCK_FENCING")]
    pub fencing: Option<String>,
    /// Watchdog device for --fencing watchdog [default: /dev/watchdog].
    #[arg(long, env = "PADDOCK_WATCHDOG_DEVICE")]
    pub watchdog_device: Option<PathBuf>,
    /// libvirt connection URI for --driver libvirt [default: qemu:///system].
    #[arg(long, env = "PADDOCK_LIBVIRT_URI")]
    pub libvirt_uri: Option<String>,
    /// How a source's libvirtd reaches this node's for live migration; `{host}` is this
    /// node's host [default: qemu+tls://{host}/system].
    #[arg(long, env = "PADDOCK_LIBVIRT_MIGRATE_URI")]
    pub libvirt_migrate_uri: Option<String>,
    /// QEMU's TLS for libvirt migration streams, true or false [default: true].
    #[arg(long, env = "PADDOCK_LIBVIRT_MIGRATE_TLS")]
    pub libvirt_migrate_tls: Option<bool>,
    /// Domain type for libvirt VMs: kvm, qemu (TCG, software) or auto (kvm when libvirt
    /// offers it and /dev/kvm can be opened, else qemu). Some KVMs run only firmware guests:
    /// set qemu there [default: auto].
    #[arg(long, env = "PADDOCK_LIBVIRT_DOMAIN_TYPE")]
    pub libvirt_domain_type: Option<String>,
    /// The network every libvirt VM's NIC joins: NAME or network:NAME (a libvirt network) or
    /// bridge:NAME (a host bridge) [default: no NIC].
    #[arg(long, env = "PADDOCK_VM_NETWORK")]
    pub vm_network: Option<String>,
    /// Storage every node mounts at this same path (NFS, CephFS...): disks of VMs with
    /// --disk-policy shared live there, so HA restarts and migrations reuse them.
    #[arg(long, env = "PADDOCK_SHARED_STORAGE")]
    pub shared_storage: Option<PathBuf>,
    /// How long a libvirt VM asked to stop may take to shut down (ACPI) before it is
    /// powered off, e.g. 30s [default: 60s].
    #[arg(long, env = "PADDOCK_LIBVIRT_SHUTDOWN_TIMEOUT")]
    pub libvirt_shutdown_timeout: Option<String>,
    /// Longest a libvirt live migration may take before it is aborted and rolled back,
    /// e.g. 10m [default: 10m].
    #[arg(long, env = "PADDOCK_LIBVIRT_MIGRATE_TIMEOUT")]
    pub libvirt_migrate_timeout: Option<String>,
    /// vCPUs this node offers to VMs [default: the host's].
    #[arg(long, env = "PADDOCK_CPUS")]
    pub cpus: Option<u32>,
    /// Memory this node offers to VMs, e.g. 16GiB [default: the host's, less --reserve-memory].
    #[arg(long, env = "PADDOCK_MEMORY")]
    pub memory: Option<String>,
    /// Memory kept for the host itself (its daemons, caches, QEMU's own overhead) out of the
    /// host's memory when --memory is not given, e.g. 2GiB [default: 0].
    #[arg(long, env = "PADDOCK_RESERVE_MEMORY")]
    pub reserve_memory: Option<String>,
    /// Disk this node offers to VMs, e.g. 500GiB [default: free space of --data-dir].
    #[arg(long, env = "PADDOCK_DISK")]
    pub disk: Option<String>,
    /// Node label for placement constraints, KEY=VALUE; repeatable.
    #[arg(long = "label", env = "PADDOCK_LABELS", value_delimiter = ',')]
    #[serde(deserialize_with = "list_or_table")]
    pub labels: Vec<String>,
    /// memvm: pages each guest dirties per second [default: 2000].
    #[arg(long, env = "PADDOCK_MEMVM_DIRTY_RATE")]
    pub memvm_dirty_rate: Option<u64>,
    /// memvm: working set each guest dirties, e.g. 16MiB [default: 16MiB].
    #[arg(long, env = "PADDOCK_MEMVM_WORKING_SET")]
    pub memvm_working_set: Option<String>,
    /// memvm: bytes each guest rewrites in every page it touches, 8–4096 [default: 8].
    #[arg(long, env = "PADDOCK_MEMVM_DIRTY_BYTES")]
    pub memvm_dirty_bytes: Option<usize>,
    /// memvm: memory each guest fills with mixed content at boot, e.g. 768MiB [default: 0].
    #[arg(long, env = "PADDOCK_MEMVM_FILL")]
    pub memvm_fill: Option<String>,
    /// Benchmarks only (`paddock bench access`): `audit-only` skips every authorization
    /// decision (audit records are still written), `none` skips decisions and audit records,
    /// so their costs can be measured. A flag only (never in the file or the environment),
    /// hidden from --help, and logged as a warning at start.
    #[arg(long, hide = true, value_parser = ["full", "audit-only", "none"])]
    #[serde(skip)]
    pub bench_access: Option<String>,
}

impl Flags {
    /// These flags over `file`: every key given here wins, the others come from the file.
    pub fn over(self, file: Flags) -> Result<Flags, ConfigError> {
        let to_value = |flags: &Flags| {
            serde_json::to_value(flags).map_err(|e| {
                invalid(format!(
                    "the configuration cannot be read: {e} (paths must be UTF-8)"
                ))
            })
        };
        let (mut merged, from_file) = (to_value(&self)?, to_value(&file)?);
        if let (Some(merged), serde_json::Value::Object(from_file)) =
            (merged.as_object_mut(), from_file)
        {
            for (key, value) in from_file {
                let unset = merged
                    .get(&key)
                    .is_none_or(|v| v.is_null() || v.as_array().is_some_and(|a| a.is_empty()));
                if unset {
                    merged.insert(key, value);
                }
            }
        }
        let mut flags: Flags = serde_json::from_value(merged)
            .map_err(|e| invalid(format!("the configuration cannot be merged: {e}")))?;
        flags.config = self.config;
        flags.bench_access = self.bench_access;
        Ok(flags)
    }
}

/// A list in flags; in the file a list, a comma-separated string or a table `{ k = "v" }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum ListOrTable {
    Text(String),
    List(Vec<String>),
    Table(BTreeMap<String, String>),
}

impl ListOrTable {
    fn items(self) -> Vec<String> {
        match self {
            ListOrTable::Text(text) => text.split(',').map(str::to_string).collect(),
            ListOrTable::List(items) => items,
            ListOrTable::Table(table) => {
                table.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
            }
        }
    }
}

fn list_or_table<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(ListOrTable::deserialize(d)?.items())
}

fn text_or_table<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<ListOrTable>::deserialize(d)?.map(|v| v.items().join(",")))
}

/// The hypervisor driver a node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    Memvm,
    Libvirt,
}

/// Which libvirt domain type VMs get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainType {
    /// kvm when libvirt offers it and /dev/kvm opens, else qemu.
    Auto,
    Kvm,
    /// TCG: software emulation, slow but runs anywhere.
    Qemu,
}

/// What a node offers and how its driver runs.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub driver: DriverKind,
    /// `Some(device)` with `--fencing watchdog`.
    pub watchdog: Option<PathBuf>,
    pub libvirt_uri: String,
    /// `{host}` stands for the destination node's host.
    pub libvirt_migrate_uri: String,
    pub libvirt_migrate_tls: bool,
    pub libvirt_domain_type: DomainType,
    pub vm_network: Option<String>,
    pub shared_storage: Option<PathBuf>,
    pub libvirt_migrate_timeout: std::time::Duration,
    pub libvirt_shutdown_timeout: std::time::Duration,
    pub cpus: Option<u32>,
    pub memory_mib: Option<u64>,
    /// Taken off the host's memory when `memory_mib` is not given.
    pub reserve_memory_mib: u64,
    pub disk_mib: Option<u64>,
    pub labels: BTreeMap<String, String>,
    pub memvm_dirty_rate: u64,
    pub memvm_working_set_mib: u64,
    pub memvm_dirty_bytes: usize,
    pub memvm_fill_mib: u64,
}

/// How this node enters the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Form (or rejoin) the cluster of these initial members, by name.
    Peers(BTreeMap<String, String>),
    /// Join a running cluster through this member.
    Join(String),
    /// Restart of an existing member: everything needed is in the data dir.
    Existing,
}

/// Validated configuration of one node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub advertise: String,
    pub http: Option<SocketAddr>,
    pub api: Option<SocketAddr>,
    pub certs_dir: PathBuf,
    pub bootstrap: Bootstrap,
    /// Dial overrides by peer name.
    pub routes: BTreeMap<String, String>,
    pub storage: StorageKind,
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    pub snapshot_every: u64,
    pub keep_logs: u64,
    pub log: String,
    pub host: HostConfig,
    /// Benchmarks only: how much of access control runs.
    pub access: crate::ops::Enforcement,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

impl NodeConfig {
    /// Merges flags (and environment) over the config file, then checks everything.
    pub fn from_flags(flags: Flags) -> Result<NodeConfig, ConfigError> {
        let flags = match &flags.config {
            Some(path) => {
                let file = read_file(path)?;
                flags.over(file)?
            }
            None => flags,
        };
        let name = flags.name.ok_or_else(|| {
            invalid("--name is required: give this node a stable name, e.g. --name n1")
        })?;
        paddock_model::ids::validate_node_name(&name).map_err(invalid)?;
        let data_dir = flags.data_dir.ok_or_else(|| {
            invalid("--data-dir is required: a directory for this node's log and state")
        })?;
        let listen_text = flags.listen.ok_or_else(|| {
            invalid("--listen is required: the host:port to serve on, e.g. --listen 127.0.0.1:7001")
        })?;
        let listen = parse_addr("--listen", &listen_text)?;
        let http = flags.http.map(|h| parse_addr("--http", &h)).transpose()?;
        let api = flags.api.map(|a| parse_addr("--api", &a)).transpose()?;
        let certs_dir = flags.certs_dir.ok_or_else(|| {
            invalid("--certs-dir is required: a directory with ca.crt and this node's certificate (see `paddock certs`)")
        })?;
        let peers_text = flags.peers;
        let join = flags.join;
        let bootstrap = match (peers_text, join) {
            (Some(_), Some(_)) => return Err(invalid("--peers and --join exclude each other: --peers forms a new cluster, --join enters a running one")),
            (Some(text), None) => Bootstrap::Peers(parse_peers(&text)?),
            (None, Some(member)) => {
                parse_addr_like("--join", &member)?;
                Bootstrap::Join(member)
            }
            (None, None) => Bootstrap::Existing,
        };
        let advertise = match (flags.advertise, &bootstrap) {
            (Some(a), _) => {
                parse_addr_like("--advertise", &a)?;
                a
            }
            (None, Bootstrap::Peers(peers)) => peers
                .get(&name)
                .cloned()
                .unwrap_or_else(|| listen_text.clone()),
            (None, _) => listen_text.clone(),
        };
        if let Bootstrap::Peers(peers) = &bootstrap {
            match peers.get(&name) {
                None => {
                    return Err(invalid(format!(
                        "--peers does not list this node {name:?}; every node must be started with the full list, including itself"
                    )))
                }
                Some(address) if *address != advertise => {
                    return Err(invalid(format!(
                        "--peers gives {name} the address {address}, but this node advertises {advertise}; make them agree"
                    )))
                }
                Some(_) => {}
            }
        }
        let routes = parse_named_addresses("--route", &flags.routes.join(","))?;
        let storage = flags
            .storage
            .map(|s| s.parse::<StorageKind>().map_err(invalid))
            .transpose()?
            .unwrap_or(StorageKind::Redb);
        let heartbeat = flags.heartbeat_ms.unwrap_or(50);
        let election_min = flags.election_min_ms.unwrap_or(200);
        let election_max = flags.election_max_ms.unwrap_or(400);
        if heartbeat == 0 || election_min <= heartbeat * 2 || election_max <= election_min {
            return Err(invalid(format!(
                "unsafe Raft timings: heartbeat {heartbeat} ms, election timeout {election_min}-{election_max} ms; \
                 the election timeout must exceed twice the heartbeat and its maximum must exceed its minimum \
                 (defaults: 50 ms, 200-400 ms)"
            )));
        }
        let snapshot_every = flags.snapshot_every.unwrap_or(10_000);
        let keep_logs = flags.keep_logs.unwrap_or(1_000);
        if snapshot_every == 0 {
            return Err(invalid("--snapshot-every must be at least 1"));
        }
        let size = |flag: &str, text: Option<String>| {
            text.map(|t| {
                paddock_model::resources::parse_mib(&t).map_err(|e| invalid(format!("{flag}: {e}")))
            })
            .transpose()
        };
        let driver = match flags.driver.as_deref() {
            None | Some("memvm") => DriverKind::Memvm,
            Some("libvirt") => DriverKind::Libvirt,
            Some(other) => {
                return Err(invalid(format!(
                    "--driver {other:?} is unknown; use memvm or libvirt"
                )))
            }
        };
        let labels = parse_labels(&flags.labels)?;
        let cpus = flags.cpus;
        if cpus == Some(0) {
            return Err(invalid("--cpus must be at least 1"));
        }
        let watchdog = match flags.fencing.as_deref() {
            None | Some("none") => None,
            Some("watchdog") => Some(
                flags
                    .watchdog_device
                    .unwrap_or_else(|| PathBuf::from("/dev/watchdog")),
            ),
            Some(other) => {
                return Err(invalid(format!(
                    "--fencing {other:?} is unknown; use none or watchdog"
                )))
            }
        };
        if flags.memory.is_some() && flags.reserve_memory.is_some() {
            return Err(invalid(
                "--memory and --reserve-memory exclude each other: --memory says exactly what this node offers, --reserve-memory what it keeps out of the host's memory",
            ));
        }
        let libvirt_migrate_uri = flags
            .libvirt_migrate_uri
            .unwrap_or_else(|| "qemu+tls://{host}/system".to_string());
        if !libvirt_migrate_uri.contains("{host}") {
            return Err(invalid(format!(
                "--libvirt-migrate-uri {libvirt_migrate_uri:?} has no {{host}}: every migration would go to the same libvirtd; use e.g. qemu+tls://{{host}}/system"
            )));
        }
        let libvirt_domain_type = match flags.libvirt_domain_type.as_deref() {
            None | Some("auto") => DomainType::Auto,
            Some("kvm") => DomainType::Kvm,
            Some("qemu") => DomainType::Qemu,
            Some(other) => {
                return Err(invalid(format!(
                    "--libvirt-domain-type {other:?} is unknown; use auto, kvm or qemu"
                )))
            }
        };
        if let Some(dir) = &flags.shared_storage {
            if !dir.is_absolute() {
                return Err(invalid(format!(
                    "--shared-storage {} is not an absolute path; give the path every node mounts the shared storage at",
                    dir.display()
                )));
            }
        }
        let libvirt_migrate_timeout = match flags.libvirt_migrate_timeout.as_deref() {
            None => std::time::Duration::from_secs(600),
            Some(text) => paddock_model::duration::parse(text)
                .map_err(|e| invalid(format!("--libvirt-migrate-timeout: {e}")))?,
        };
        let libvirt_shutdown_timeout = match flags.libvirt_shutdown_timeout.as_deref() {
            None => std::time::Duration::from_secs(60),
            Some(text) => paddock_model::duration::parse(text)
                .map_err(|e| invalid(format!("--libvirt-shutdown-timeout: {e}")))?,
        };
        let host = HostConfig {
            libvirt_shutdown_timeout,
            libvirt_domain_type,
            vm_network: flags.vm_network,
            shared_storage: flags.shared_storage,
            libvirt_migrate_timeout,
            driver,
            watchdog,
            libvirt_uri: flags
                .libvirt_uri
                .unwrap_or_else(|| "qemu:///system".to_string()),
            libvirt_migrate_uri,
            libvirt_migrate_tls: flags.libvirt_migrate_tls.unwrap_or(true),
            cpus,
            memory_mib: size("--memory", flags.memory)?,
            reserve_memory_mib: size("--reserve-memory", flags.reserve_memory)?.unwrap_or(0),
            disk_mib: size("--disk", flags.disk)?,
            labels,
            memvm_dirty_rate: flags.memvm_dirty_rate.unwrap_or(2000),
            memvm_working_set_mib: size("--memvm-working-set", flags.memvm_working_set)?
                .unwrap_or(16),
            memvm_dirty_bytes: match flags.memvm_dirty_bytes {
                None => 8,
                Some(n) if (8..=4096).contains(&n) => n,
                Some(n) => {
                    return Err(invalid(format!(
                        "--memvm-dirty-bytes must be 8–4096, not {n}"
                    )))
                }
            },
            memvm_fill_mib: size("--memvm-fill", flags.memvm_fill)?.unwrap_or(0),
        };
        Ok(NodeConfig {
            name,
            data_dir,
            listen,
            advertise,
            http,
            api,
            certs_dir,
            bootstrap,
            routes,
            storage,
            heartbeat: Duration::from_millis(heartbeat),
            election_min: Duration::from_millis(election_min),
            election_max: Duration::from_millis(election_max),
            snapshot_every,
            keep_logs,
            log: flags
                .log
                .unwrap_or_else(|| "info,openraft=warn".to_string()),
            host,
            access: match flags.bench_access.as_deref() {
                Some("audit-only") => crate::ops::Enforcement::AuditOnly,
                Some("none") => crate::ops::Enforcement::None,
                _ => crate::ops::Enforcement::Full,
            },
        })
    }
}

/// Parses `KEY=VALUE` labels.
pub fn parse_labels(items: &[String]) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut labels = BTreeMap::new();
    for item in items.iter().filter(|i| !i.trim().is_empty()) {
        let (key, value) = item.split_once('=').ok_or_else(|| {
            invalid(format!(
                "--label {item:?} is not KEY=VALUE; use e.g. --label zone=a"
            ))
        })?;
        let key = key.trim();
        if key.is_empty() || key.len() > 63 {
            return Err(invalid(format!(
                "--label {item:?}: the key must be 1–63 characters"
            )));
        }
        labels.insert(key.to_string(), value.trim().to_string());
    }
    Ok(labels)
}

fn read_file(path: &Path) -> Result<Flags, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    parse_file(&text, path)
}

/// The keys of a config file's text (`path` only names it in errors).
pub fn parse_file(text: &str, path: &Path) -> Result<Flags, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::ParseFile {
        path: path.to_path_buf(),
        message: e.message().to_string(),
    })
}

impl NodeConfig {
    /// A node's configuration from a config file's text alone (no flags, no environment):
    /// what `paddockd --config FILE` makes of it. For tests and fuzzing.
    pub fn from_file_text(text: &str) -> Result<NodeConfig, ConfigError> {
        let path = Path::new("paddockd.toml");
        let file = parse_file(text, path)?;
        let mut file = Flags::default().over(file)?;
        file.config = None;
        NodeConfig::from_flags(file)
    }
}

fn parse_addr(flag: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        invalid(format!(
            "{flag} {text:?} is not an IP:port address; use e.g. 127.0.0.1:7001 or 0.0.0.0:7001"
        ))
    })
}

/// host:port where host may be a DNS name.
fn parse_addr_like(flag: &str, text: &str) -> Result<(), ConfigError> {
    let ok = text
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{flag} {text:?} is not host:port; use e.g. 10.0.0.5:7001"
        )))
    }
}

/// Parses `n1=h:p,n2=h:p`: the initial members.
pub fn parse_peers(text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let peers = parse_named_addresses("--peers", text)?;
    if peers.is_empty() {
        return Err(invalid(
            "--peers is empty; give every initial member as NAME=HOST:PORT",
        ));
    }
    let mut addresses: Vec<&String> = peers.values().collect();
    addresses.sort();
    if addresses.windows(2).any(|w| w[0] == w[1]) {
        return Err(invalid("--peers gives two nodes the same address"));
    }
    Ok(peers)
}

/// Parses `NAME=HOST:PORT` items separated by commas; `flag` names the source in errors.
fn parse_named_addresses(flag: &str, text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut parsed = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, address) = item.split_once('=').ok_or_else(|| {
            invalid(format!(
                "{flag} entry {item:?} is not NAME=HOST:PORT; expected e.g. n1=127.0.0.1:7001,n2=127.0.0.1:7002"
            ))
        })?;
        paddock_model::ids::validate_node_name(name).map_err(invalid)?;
        parse_addr_like(flag, address)?;
        if parsed
            .insert(name.to_string(), address.to_string())
            .is_some()
        {
            return Err(invalid(format!("{flag} names {name} twice")));
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        let mut all = vec!["paddockd"];
        all.extend_from_slice(args);
        Flags::try_parse_from(all).expect("flags parse")
    }

    const BASE: [&str; 6] = [
        "--name",
        "n1",
        "--data-dir",
        "/tmp/x",
        "--certs-dir",
        "/tmp/c",
    ];

    fn with(extra: &[&str]) -> Result<NodeConfig, ConfigError> {
        let mut args = BASE.to_vec();
        args.extend_from_slice(extra);
        NodeConfig::from_flags(flags(&args))
    }

    #[test]
    fn peers_give_the_advertised_address() {
        let cfg = with(&[
            "--listen",
            "127.0.0.1:7001",
            "--peers",
            "n1=127.0.0.1:7001,n2=127.0.0.1:7002",
        ])
        .expect("valid");
        assert_eq!(cfg.advertise, "127.0.0.1:7001");
        assert!(matches!(cfg.bootstrap, Bootstrap::Peers(ref p) if p.len() == 2));
        assert_eq!(cfg.storage, StorageKind::Redb);
    }

    #[test]
    fn bad_input_is_explained() {
        let cases: &[(&[&str], &str)] = &[
            (&["--listen", "nonsense"], "not an IP:port"),
            (
                &["--listen", "127.0.0.1:7001", "--peers", "n2=127.0.0.1:7002"],
                "does not list this node",
            ),
            (
                &["--listen", "127.0.0.1:7001", "--peers", "n1"],
                "not NAME=HOST:PORT",
            ),
            (
                &[
                    "--listen",
                    "127.0.0.1:7001",
                    "--advertise",
                    "127.0.0.1:7001",
                    "--peers",
                    "n1=127.0.0.1:9",
                ],
                "make them agree",
            ),
            (
                &["--listen", "127.0.0.1:7001", "--storage", "rocks"],
                "unknown storage engine",
            ),
            (
                &["--listen", "127.0.0.1:7001", "--heartbeat-ms", "500"],
                "unsafe Raft timings",
            ),
            (
                &["--listen", "127.0.0.1:7001", "--join", "x"],
                "not host:port",
            ),
            (
                &["--listen", "127.0.0.1:7001", "--route", "n2"],
                "--route entry \"n2\" is not NAME=HOST:PORT",
            ),
            (
                &[
                    "--listen",
                    "127.0.0.1:7001",
                    "--libvirt-migrate-uri",
                    "qemu+tls://10.0.0.9/system",
                ],
                "has no {host}",
            ),
            (
                &[
                    "--listen",
                    "127.0.0.1:7001",
                    "--memory",
                    "4GiB",
                    "--reserve-memory",
                    "1GiB",
                ],
                "exclude each other",
            ),
            (
                &["--listen", "127.0.0.1:7001", "--reserve-memory", "lots"],
                "--reserve-memory",
            ),
        ];
        for (args, expected) in cases {
            let err = with(args).expect_err("must be refused").to_string();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }

    #[test]
    fn the_file_fills_in_and_flags_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("paddock.toml");
        std::fs::write(
            &path,
            "name = \"n1\"\ndata_dir = \"/d\"\nlisten = \"127.0.0.1:7001\"\ncerts_dir = \"/c\"\nheartbeat_ms = 50\n[peers]\nn1 = \"127.0.0.1:7001\"\nn2 = \"127.0.0.1:7002\"\n",
        )
        .expect("write");
        let path_text = path.to_str().expect("utf8");
        let cfg = NodeConfig::from_flags(flags(&["--config", path_text, "--heartbeat-ms", "80"]))
            .expect("valid");
        assert_eq!(cfg.heartbeat, Duration::from_millis(80));
        assert_eq!(cfg.data_dir, PathBuf::from("/d"));
        assert!(matches!(cfg.bootstrap, Bootstrap::Peers(ref p) if p.len() == 2));

        // Lists as tables or arrays, and flags' lists replace the file's.
        std::fs::write(
            &path,
            "name = \"n1\"\ndata_dir = \"/d\"\nlisten = \"127.0.0.1:7001\"\ncerts_dir = \"/c\"\npeers = \"n1=127.0.0.1:7001\"\nlabels = [\"zone=a\", \"rack=r1\"]\n[routes]\nn2 = \"127.0.0.1:9002\"\n",
        )
        .expect("write");
        let cfg = NodeConfig::from_flags(flags(&["--config", path_text])).expect("valid");
        assert_eq!(cfg.host.labels.get("rack").map(String::as_str), Some("r1"));
        assert_eq!(
            cfg.routes.get("n2").map(String::as_str),
            Some("127.0.0.1:9002")
        );
        let cfg = NodeConfig::from_flags(flags(&["--config", path_text, "--label", "zone=b"]))
            .expect("valid");
        assert_eq!(cfg.host.labels.len(), 1, "{:?}", cfg.host.labels);
        assert_eq!(cfg.host.labels.get("zone").map(String::as_str), Some("b"));
        // The file may not name the file.
        std::fs::write(&path, "config = \"/etc/other.toml\"\n").expect("write");
        let err = NodeConfig::from_flags(flags(&["--config", path_text])).expect_err("unknown key");
        assert!(err.to_string().contains("config"), "{err}");

        std::fs::write(&path, "name = \"n1\"\nlisten_on = \"x\"\n").expect("write");
        let err = NodeConfig::from_flags(flags(&["--config", path_text])).expect_err("unknown key");
        assert!(err.to_string().contains("listen_on"), "{err}");
    }
}
