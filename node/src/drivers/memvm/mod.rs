//! memvm, the embedded default driver (DESIGN.md §6): each VM is a `paddock-memvm` process
//! ([`guest`]) holding the guest memory and running the guest loop, the way each libvirt
//! domain is a QEMU process. Guests outlive a paddockd restart, and a restarted paddockd adopts
//! them from their directories; killing the host (the process group) kills them too.
//!
//! Layout under `DATA/memvm/`: `vms/VM/guest.json` (epoch, pid, spec), `vms/VM/status.json`
//! (written by the guest), `vms/VM/stop` (stop request), `vms/VM/control.sock` (the guest's
//! control socket: migrations), `vms/VM/incoming.json` (an incoming guest's port), `runs/`
//! (run intervals of every VM that ran here, for the chaos checkers).

pub mod control;
pub mod guest;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use paddock_model::VmSpec;
use serde::{Deserialize, Serialize};

use super::{
    Driver, DriverError, IncomingReady, Instance, InstanceState, MigrateRequest, MigrationStatus,
};
use control::{Reply, Request};
use guest::{now_ms, write_json, GuestStatus};

/// What the driver records when it starts a guest.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GuestRecord {
    vm: String,
    epoch: u64,
    pid: u32,
    memory_mib: u64,
    started_ms: u64,
}

/// Guest loop settings for every VM of this node.
#[derive(Debug, Clone, Copy)]
pub struct GuestLoad {
    pub dirty_pages_per_sec: u64,
    pub working_set_mib: u64,
    /// Bytes rewritten in each touched page (8–4096).
    pub dirty_write_bytes: usize,
    /// MiB filled with mixed content at boot (benchmarks).
    pub fill_mib: u64,
}

pub struct MemVm {
    root: PathBuf,
    lease_file: PathBuf,
    node: String,
    guest_bin: PathBuf,
    load: GuestLoad,
    /// The node's certificates (for migrations between guests).
    certs_dir: Option<PathBuf>,
    /// Guests this process started, so their exits are reaped (adopted ones are not ours).
    children: Mutex<HashMap<String, Child>>,
}

fn err(context: &str, e: impl std::fmt::Display) -> DriverError {
    DriverError(format!("{context}: {e}"))
}

impl MemVm {
    /// A driver keeping its guests under `data_dir/memvm`. The guest program is
    /// `paddock-memvm` next to the running paddockd.
    pub fn open(
        data_dir: &Path,
        node: &str,
        load: GuestLoad,
        certs_dir: Option<&Path>,
    ) -> anyhow::Result<MemVm> {
        let root = data_dir.join("memvm");
        std::fs::create_dir_all(root.join("vms"))?;
        std::fs::create_dir_all(root.join("runs"))?;
        let exe = std::env::current_exe()?;
        let guest_bin = exe.with_file_name("paddock-memvm");
        anyhow::ensure!(
            guest_bin.is_file(),
            "the memvm guest program {} is missing; build it with `cargo build --bins` (it ships next to paddockd)",
            guest_bin.display()
        );
        Ok(MemVm {
            root,
            lease_file: crate::liveness::lease_path(data_dir),
            node: node.to_string(),
            guest_bin,
            load,
            certs_dir: certs_dir.map(Path::to_path_buf),
            children: Mutex::new(HashMap::new()),
        })
    }

    fn vm_dir(&self, vm: &str) -> PathBuf {
        self.root.join("vms").join(vm)
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }

    fn record(&self, vm: &str) -> Option<GuestRecord> {
        let text = std::fs::read(self.vm_dir(vm).join("guest.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn status(&self, vm: &str) -> Option<GuestStatus> {
        let text = std::fs::read(self.vm_dir(vm).join("status.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn call(&self, vm: &str, request: &Request) -> Result<Reply, DriverError> {
        let socket = self.vm_dir(vm).join("control.sock");
        let reply = control::call(&socket, request)
            .map_err(|e| err(&format!("cannot reach the guest of {vm}"), e))?;
        if reply.ok {
            Ok(reply)
        } else {
            Err(DriverError(
                reply.error.unwrap_or_else(|| "guest refused".into()),
            ))
        }
    }

    /// Starts a guest process (booting, or waiting for an incoming migration).
    fn spawn(
        &self,
        vm: &str,
        epoch: u64,
        spec: &VmSpec,
        incoming: Option<(u64, &str)>,
    ) -> Result<(), DriverError> {
        if let Some(record) = self.record(vm) {
            if guest_alive(record.pid, vm) {
                return Err(DriverError(format!(
                    "{vm} already runs here (pid {}, epoch {})",
                    record.pid, record.epoch
                )));
            }
        }
        let dir = self.vm_dir(vm);
        std::fs::create_dir_all(&dir).map_err(|e| err("cannot create the VM directory", e))?;
        for stale in ["stop", "status.json", "incoming.json", "control.sock"] {
            let _ = std::fs::remove_file(dir.join(stale));
        }
        let log = std::fs::File::create(dir.join("guest.log"))
            .map_err(|e| err("cannot create the guest log", e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| err("cannot create the guest log", e))?;
        let mut command = Command::new(&self.guest_bin);
        command
            .args(["--vm", vm, "--node", &self.node])
            .args(["--epoch", &epoch.to_string()])
            .args(["--memory-mib", &spec.memory_mib.to_string()])
            .arg("--dir")
            .arg(&dir)
            .arg("--runs-dir")
            .arg(self.runs_dir())
            .args([
                "--dirty-pages-per-sec",
                &self.load.dirty_pages_per_sec.to_string(),
            ])
            .args(["--working-set-mib", &self.load.working_set_mib.to_string()])
            .args([
                "--dirty-write-bytes",
                &self.load.dirty_write_bytes.to_string(),
            ])
            .arg("--lease-file")
            .arg(&self.lease_file);
        if let Some(certs) = &self.certs_dir {
            command.arg("--certs-dir").arg(certs);
        }
        match incoming {
            Some((migration, host)) => {
                command
                    .args(["--incoming", &migration.to_string()])
                    .args(["--listen", &format!("{host}:0")]);
            }
            None => {
                command.args(["--fill-mib", &self.load.fill_mib.to_string()]);
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| err("cannot start the memvm guest", e))?;
        let record = GuestRecord {
            vm: vm.to_string(),
            epoch,
            pid: child.id(),
            memory_mib: spec.memory_mib,
            started_ms: now_ms(),
        };
        write_json(&dir.join("guest.json"), &record)
            .map_err(|e| err("cannot record the guest", e))?;
        if let Ok(mut children) = self.children.lock() {
            children.insert(vm.to_string(), child);
        }
        Ok(())
    }

    /// Reaps guests of ours that exited (so they do not linger as zombies).
    fn reap(&self) {
        if let Ok(mut children) = self.children.lock() {
            children.retain(|_, child| matches!(child.try_wait(), Ok(None)));
        }
    }
}

/// Whether `pid` is a live guest process of `vm` (not a zombie, not a recycled pid).
fn guest_alive(pid: u32, vm: &str) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let ours = args.first().is_some_and(|a| a.ends_with(b"paddock-memvm"))
        && args
            .windows(2)
            .any(|w| w[0] == b"--vm" && w[1] == vm.as_bytes());
    let zombie = std::fs::read_to_string(proc_dir.join("stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true);
    ours && !zombie
}

impl Driver for MemVm {
    fn name(&self) -> &'static str {
        "memvm"
    }

    fn list(&self) -> Result<Vec<Instance>, DriverError> {
        self.reap();
        let entries = std::fs::read_dir(self.root.join("vms"))
            .map_err(|e| err("cannot list memvm VMs", e))?;
        let mut instances = Vec::new();
        for entry in entries.flatten() {
            let vm = entry.file_name().to_string_lossy().to_string();
            let Some(record) = self.record(&vm) else {
                continue;
            };
            let status = self
                .status(&vm)
                .filter(|s| s.epoch == record.epoch && s.pid == record.pid);
            let state = if guest_alive(record.pid, &vm) {
                match status.as_ref().map(|s| s.state.as_str()) {
                    _ if self.vm_dir(&vm).join("stop").exists() => InstanceState::Stopping,
                    // Paused by a migration: it still owns the VM until the switch.
                    Some("running" | "paused") => InstanceState::Running,
                    Some("preparing" | "incoming") => InstanceState::Incoming,
                    Some("migrated") => InstanceState::Migrated,
                    _ => InstanceState::Starting,
                }
            } else if status.as_ref().is_some_and(|s| s.state == "migrated") {
                InstanceState::Migrated
            } else if status
                .as_ref()
                .is_some_and(|s| s.state == "stopped" || s.state == "fenced")
            {
                // A fenced guest halted itself when its node's lease ended: stopped by the
                // host, started again once the node holds a lease and still owns it.
                InstanceState::Stopped
            } else {
                let log =
                    std::fs::read_to_string(self.vm_dir(&vm).join("guest.log")).unwrap_or_default();
                let last = log.lines().last().unwrap_or("no message").to_string();
                InstanceState::Crashed(format!("guest process {} exited: {last}", record.pid))
            };
            instances.push(Instance {
                vm,
                epoch: record.epoch,
                state,
            });
        }
        instances.sort_by(|a, b| a.vm.cmp(&b.vm));
        Ok(instances)
    }

    fn start(&self, vm: &str, epoch: u64, spec: &VmSpec) -> Result<(), DriverError> {
        self.spawn(vm, epoch, spec, None)
    }

    fn stop(&self, vm: &str) -> Result<(), DriverError> {
        std::fs::write(self.vm_dir(vm).join("stop"), b"")
            .map_err(|e| err("cannot ask the guest to stop", e))
    }

    fn destroy(&self, vm: &str) -> Result<(), DriverError> {
        let record = self.record(vm);
        let killed = match &record {
            Some(record) if guest_alive(record.pid, vm) => {
                if let Some(pid) = rustix::process::Pid::from_raw(record.pid as i32) {
                    rustix::process::kill_process(pid, rustix::process::Signal::KILL)
                        .map_err(|e| err("cannot kill the guest", e))?;
                }
                true
            }
            _ => false,
        };
        if let Ok(mut children) = self.children.lock() {
            if let Some(mut child) = children.remove(vm) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let (true, Some(record)) = (killed, &record) {
            // Gone for sure (an adopted guest is not our child: watch it go), so its run
            // interval gets a sure end: its last step came before the kill, and no later than
            // one record period (plus a tick) after its last record (a guest paused with its
            // host stopped stepping long before it was killed).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while guest_alive(record.pid, vm) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            if !guest_alive(record.pid, vm) {
                let path = self
                    .runs_dir()
                    .join(format!("{vm}-{}-{}.json", record.epoch, record.pid));
                // A guest that ended cleanly (migrated away, waiting to be destroyed) already
                // wrote its exact last step: keep it.
                if let Some(mut interval) = std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<guest::RunInterval>(&b).ok())
                    .filter(|i| !i.exact_end)
                {
                    let bound = interval.end_ms + guest::RECORD_EVERY.as_millis() as u64 + 100;
                    interval.end_ms = now_ms().min(bound).max(interval.end_ms);
                    interval.exact_end = true;
                    let _ = write_json(&path, &interval);
                }
            }
        }
        match std::fs::remove_dir_all(self.vm_dir(vm)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err("cannot remove the VM directory", e)),
        }
    }

    fn prepare_incoming(
        &self,
        vm: &str,
        epoch: u64,
        spec: &VmSpec,
        migration: u64,
        listen_host: &str,
    ) -> Result<(), DriverError> {
        if self.certs_dir.is_none() {
            return Err(DriverError(
                "this node has no certificates directory: migrations run over mutual TLS".into(),
            ));
        }
        self.spawn(vm, epoch, spec, Some((migration, listen_host)))
    }

    fn incoming_ready(&self, vm: &str) -> Result<Option<IncomingReady>, DriverError> {
        let Ok(text) = std::fs::read(self.vm_dir(vm).join("incoming.json")) else {
            return Ok(None);
        };
        let ready: guest::IncomingReady =
            serde_json::from_slice(&text).map_err(|e| err("unreadable incoming.json", e))?;
        Ok(Some(IncomingReady {
            port: ready.port,
            address: None,
            prepare_ms: ready.prepare_ms,
        }))
    }

    fn migrate_out(&self, vm: &str, request: &MigrateRequest) -> Result<(), DriverError> {
        self.call(vm, &Request::Migrate(request.clone()))
            .map(|_| ())
    }

    fn migration_status(&self, vm: &str) -> Result<MigrationStatus, DriverError> {
        let reply = self.call(vm, &Request::Query)?;
        Ok(MigrationStatus {
            role: reply.role.unwrap_or(super::MigrationRole::None),
            migration: reply.migration,
            progress: reply.progress,
        })
    }

    fn migration_switch(&self, vm: &str, committed: bool) -> Result<(), DriverError> {
        self.call(vm, &Request::Switch { committed }).map(|_| ())
    }

    fn migration_cancel(&self, vm: &str, reason: &str) -> Result<(), DriverError> {
        self.call(
            vm,
            &Request::Cancel {
                reason: reason.to_string(),
            },
        )
        .map(|_| ())
    }
}
