//! The libvirt driver (cargo feature `libvirt`, crate `virt`): one persistent domain per VM,
//! named after it, defined from the spec ([`domain`]) with disks of its own ([`disks`]).
//! Paddock marks its domains with a description `paddock-epoch:N` (the assignment epoch) and
//! leaves every other domain on the host alone.
//!
//! All calls block; the agent runs them on `spawn_blocking`. libvirt's lifecycle events wake
//! the agent ([`events`]), so a crash is reported within a pass; the agent's periodic pass
//! still lists every domain, as a safety net for a lost event.
//!
//! Fencing: QEMU does not read Paddock's lease. `paddock-fence` ([`fence`]), a process of its
//! own that outlives paddockd, destroys every Paddock domain of this libvirtd when the lease
//! ends; QEMU's image locking keeps a second QEMU off a disk still open elsewhere.
//! Live migration: see [`migration`].

mod addresses;
mod console;
pub mod disks;
pub mod domain;
mod events;
pub mod fence;
pub mod migration;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paddock_model::VmSpec;
use virt::connect::Connect;
use virt::domain::{Domain, DomainShutoffReason, DomainState, DomainStateReason};
use virt::enumutil::Enum;
use virt::sys;

use self::disks::DiskStore;
use self::domain::{Layout, VmNetwork};
use self::migration::{MigrationConfig, Outgoing};
use super::{
    Driver, DriverError, IncomingReady, Instance, InstanceState, MigrateRequest, MigrationRole,
    MigrationStatus,
};
use crate::config::DomainType;

const EPOCH_MARK: &str = "paddock-epoch:";
const INCOMING_MARK: &str = "paddock-incoming:";

/// How the driver reaches libvirt and lays out its VMs.
#[derive(Debug, Clone)]
pub struct LibvirtSettings {
    pub uri: String,
    pub domain_type: DomainType,
    pub migration: MigrationConfig,
    /// `--vm-network`, unparsed.
    pub network: Option<String>,
    /// How long a guest may take to shut down before it is powered off.
    pub shutdown_timeout: Duration,
    pub disks: DiskStore,
}

pub struct Libvirt {
    uri: String,
    conn: Mutex<Connect>,
    domain_type: &'static str,
    network: Option<VmNetwork>,
    disks: DiskStore,
    shutdown_timeout: Duration,
    /// When each VM was first asked to shut down (cleared once it stopped).
    stopping: Mutex<HashMap<String, Instant>>,
    migration: MigrationConfig,
    changes: Arc<tokio::sync::Notify>,
    /// Outgoing migrations by VM (kept after they end, for their figures).
    outgoing: Mutex<HashMap<String, Arc<Outgoing>>>,
    /// Incoming migrations prepared here: VM → the address published for the source.
    incoming: Mutex<HashMap<String, String>>,
}

fn err(context: &str, e: impl std::fmt::Display) -> DriverError {
    DriverError(format!("{context}: {e}"))
}

/// Connects to `uri`, explaining what to check when it fails.
pub fn connect(uri: &str) -> Result<Connect, DriverError> {
    Connect::open(Some(uri)).map_err(|e| {
        err(
            &format!("cannot connect to libvirt at {uri} (is libvirtd running, and may this user use it?)"),
            e,
        )
    })
}

impl Libvirt {
    /// Connects to libvirt (e.g. `qemu:///system`, `test:///default`) and checks that it can
    /// run the configured domain type.
    pub fn open(settings: LibvirtSettings) -> Result<Libvirt, DriverError> {
        // libvirt prints every error to stderr by default; ours are returned and logged.
        virt::error::clear_error_callback();
        events::start_loop()?;
        let conn = connect(&settings.uri)?;
        let domain_type = resolve_domain_type(&conn, &settings.uri, settings.domain_type)?;
        let network = settings
            .network
            .as_deref()
            .map(VmNetwork::parse)
            .transpose()
            .map_err(DriverError)?;
        let changes = Arc::new(tokio::sync::Notify::new());
        events::watch(&conn, changes.clone())?;
        tracing::info!(uri = %settings.uri, domain_type, "libvirt driver ready");
        Ok(Libvirt {
            uri: settings.uri,
            conn: Mutex::new(conn),
            domain_type,
            network,
            disks: settings.disks,
            shutdown_timeout: settings.shutdown_timeout,
            stopping: Mutex::new(HashMap::new()),
            migration: settings.migration,
            changes,
            outgoing: Mutex::new(HashMap::new()),
            incoming: Mutex::new(HashMap::new()),
        })
    }

    /// Runs `call` on the connection, reconnecting first if libvirtd went away (restarted).
    fn with_conn<T>(
        &self,
        call: impl FnOnce(&Connect) -> Result<T, DriverError>,
    ) -> Result<T, DriverError> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| DriverError("the libvirt connection lock is poisoned".into()))?;
        if !conn.is_alive().unwrap_or(false) {
            let fresh = connect(&self.uri)?;
            events::watch(&fresh, self.changes.clone())?;
            // The old connection is closed when dropped.
            *conn = fresh;
            tracing::info!(uri = %self.uri, "reconnected to libvirt");
        }
        call(&conn)
    }

    fn console_path(&self, vm: &str) -> PathBuf {
        self.disks.local.join(vm).join("console.log")
    }

    /// `vm`'s console log path, its directory made (QEMU creates the file, not the directory).
    fn console_ready(&self, vm: &str) -> Result<PathBuf, DriverError> {
        let console = self.console_path(vm);
        if let Some(dir) = console.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| err(&format!("cannot create {}", dir.display()), e))?;
        }
        Ok(console)
    }

    fn layout_xml(&self, vm: &str, epoch: u64, spec: &VmSpec) -> Result<String, DriverError> {
        let disks = self.disks.ensure(vm, spec)?;
        let console = self.console_ready(vm)?;
        let layout = Layout {
            domain_type: self.domain_type,
            disks: &disks,
            network: self.network.as_ref(),
            console_log: &console.display().to_string(),
            shared: spec.guest.disk_policy == paddock_model::vm::DiskPolicy::Shared,
        };
        Ok(domain::domain_xml(
            vm,
            Marks {
                epoch,
                incoming: None,
            },
            spec,
            &layout,
        ))
    }
}

/// The domain type VMs get: `test` for the test driver; else as configured, checked against
/// what this libvirt offers.
fn resolve_domain_type(
    conn: &Connect,
    uri: &str,
    wanted: DomainType,
) -> Result<&'static str, DriverError> {
    if uri.starts_with("test:") {
        return Ok("test");
    }
    let offers = |virttype: &str| {
        conn.domain_capabilities(None, None, None, Some(virttype), 0)
            .is_ok()
    };
    let kvm_opens = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
    };
    match wanted {
        DomainType::Qemu if offers("qemu") => Ok("qemu"),
        DomainType::Qemu => Err(DriverError(format!(
            "libvirt at {uri} cannot run QEMU domains: install qemu-system-x86 (and restart libvirtd)"
        ))),
        DomainType::Kvm if offers("kvm") && kvm_opens() => Ok("kvm"),
        DomainType::Kvm => Err(DriverError(format!(
            "--libvirt-domain-type kvm: libvirt at {uri} offers no KVM here, or /dev/kvm cannot be opened; load the kvm module, or use --libvirt-domain-type qemu"
        ))),
        DomainType::Auto if offers("kvm") && kvm_opens() => Ok("kvm"),
        DomainType::Auto if offers("qemu") => {
            tracing::warn!("no usable KVM: VMs run under QEMU's software emulation (TCG), which is slow");
            Ok("qemu")
        }
        DomainType::Auto => Err(DriverError(format!(
            "libvirt at {uri} can run neither kvm nor qemu domains: install qemu-system-x86"
        ))),
    }
}

/// What Paddock writes in the description of its domains: `paddock-epoch:N`, and on a
/// migration's destination until its switch ` paddock-incoming:M`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marks {
    /// The assignment epoch the domain runs for.
    pub epoch: u64,
    /// The migration bringing it here, until its switch committed.
    pub incoming: Option<u64>,
}

impl Marks {
    pub fn parse(description: &str) -> Option<Marks> {
        let mut words = description.split_whitespace();
        let epoch = words.next()?.strip_prefix(EPOCH_MARK)?.parse().ok()?;
        let incoming = match words.next() {
            None => None,
            Some(word) => Some(word.strip_prefix(INCOMING_MARK)?.parse().ok()?),
        };
        Some(Marks { epoch, incoming })
    }

    pub fn render(&self) -> String {
        match self.incoming {
            None => format!("{EPOCH_MARK}{}", self.epoch),
            Some(m) => format!("{EPOCH_MARK}{} {INCOMING_MARK}{m}", self.epoch),
        }
    }
}

/// Paddock's marks on a domain, or `None` for domains that are not Paddock's.
fn marks_of(domain: &Domain) -> Option<Marks> {
    let description = domain
        .metadata(sys::VIR_DOMAIN_METADATA_DESCRIPTION as i32, None, 0)
        .ok()?;
    Marks::parse(&description)
}

fn epoch_of(domain: &Domain) -> Option<u64> {
    marks_of(domain).map(|m| m.epoch)
}

/// A domain's XML with its description replaced by `marks` (what a migration's destination
/// defines).
pub fn incoming_xml(source_xml: &str, marks: Marks) -> Result<String, DriverError> {
    let (open, close) = ("<description>", "</description>");
    let start = source_xml.find(open);
    let end = start.and_then(|s| source_xml[s..].find(close).map(|e| s + e + close.len()));
    let (Some(start), Some(end)) = (start, end) else {
        return Err(DriverError(
            "the domain XML has no description: is this domain Paddock's?".into(),
        ));
    };
    Ok(format!(
        "{}{open}{}{close}{}",
        &source_xml[..start],
        marks.render(),
        &source_xml[end..]
    ))
}

/// `vm`'s domain on this host as the source of a migration (a Paddock domain not itself
/// arriving), with its marks.
fn leaving(conn: &Connect, vm: &str) -> Result<(Domain, Marks), DriverError> {
    let domain = conn
        .lookup_domain_by_name(vm)
        .map_err(|e| err(&format!("no domain {vm} here"), e))?;
    let marks = marks_of(&domain).ok_or_else(|| foreign(vm))?;
    if marks.incoming.is_some() {
        return Err(DriverError(format!("{vm} is itself still arriving here")));
    }
    Ok((domain, marks))
}

fn state_of(domain: &Domain, marks: Marks) -> Result<InstanceState, DriverError> {
    if marks.incoming.is_some() {
        return Ok(InstanceState::Incoming);
    }
    let (state, reason) = domain
        .state()
        .map_err(|e| err("cannot read the domain state", e))?;
    Ok(match state {
        Enum::Known(DomainState::Running | DomainState::Blocked | DomainState::Paused) => {
            InstanceState::Running
        }
        Enum::Known(DomainState::Shutdown) => InstanceState::Stopping,
        Enum::Known(DomainState::Shutoff) => match reason {
            Enum::Known(DomainStateReason::Shutoff(Enum::Known(DomainShutoffReason::Migrated))) => {
                InstanceState::Migrated
            }
            Enum::Known(DomainStateReason::Shutoff(Enum::Known(
                DomainShutoffReason::Crashed | DomainShutoffReason::Failed,
            ))) => InstanceState::Crashed("the domain crashed or failed to start".into()),
            _ => InstanceState::Stopped,
        },
        Enum::Known(DomainState::Crashed) => InstanceState::Crashed("the domain crashed".into()),
        _ => InstanceState::Starting,
    })
}

impl Driver for Libvirt {
    fn name(&self) -> &'static str {
        "libvirt"
    }

    fn list(&self) -> Result<Vec<Instance>, DriverError> {
        self.with_conn(|conn| {
            let domains = conn
                .list_all_domains(0)
                .map_err(|e| err("cannot list domains", e))?;
            let mut instances = Vec::new();
            for domain in domains {
                let Some(marks) = marks_of(&domain) else {
                    continue;
                };
                instances.push(Instance {
                    vm: domain
                        .name()
                        .map_err(|e| err("cannot read a domain name", e))?,
                    epoch: marks.epoch,
                    state: state_of(&domain, marks)?,
                });
            }
            instances.sort_by(|a, b| a.vm.cmp(&b.vm));
            Ok(instances)
        })
    }

    fn state(&self, vm: &str) -> Result<Option<InstanceState>, DriverError> {
        self.with_conn(|conn| {
            let Ok(domain) = conn.lookup_domain_by_name(vm) else {
                return Ok(None);
            };
            match marks_of(&domain) {
                Some(marks) => state_of(&domain, marks).map(Some),
                None => Ok(None),
            }
        })
    }

    fn start(&self, vm: &str, epoch: u64, spec: &VmSpec) -> Result<(), DriverError> {
        lock(&self.stopping).remove(vm);
        let xml = self.layout_xml(vm, epoch, spec)?;
        self.with_conn(|conn| {
            if let Ok(existing) = conn.lookup_domain_by_name(vm) {
                match epoch_of(&existing) {
                    Some(e) if e == epoch => {}
                    Some(_) => {
                        // An older assignment's definition: replace it.
                        if existing.is_active().unwrap_or(false) {
                            existing
                                .destroy()
                                .map_err(|e| err("cannot destroy the old domain", e))?;
                        }
                        existing
                            .undefine()
                            .map_err(|e| err("cannot undefine the old domain", e))?;
                    }
                    None => {
                        return Err(DriverError(format!(
                            "a domain named {vm} exists on this host and is not Paddock's; rename or remove it"
                        )))
                    }
                }
            }
            let domain = conn
                .define_domain_xml(&xml)
                .map_err(|e| err("cannot define the domain", e))?;
            if !domain.is_active().unwrap_or(false) {
                domain
                    .create()
                    .map_err(|e| err("cannot start the domain", e))?;
            }
            Ok(())
        })
    }

    /// Asks the guest to shut down (ACPI); powers it off once it has had the shutdown timeout
    /// (the agent asks again every pass while it runs).
    fn stop(&self, vm: &str) -> Result<(), DriverError> {
        let first_asked = *lock(&self.stopping)
            .entry(vm.to_string())
            .or_insert_with(Instant::now);
        let overdue = first_asked.elapsed() >= self.shutdown_timeout;
        self.with_conn(|conn| {
            let domain = conn
                .lookup_domain_by_name(vm)
                .map_err(|e| err(&format!("no domain {vm}"), e))?;
            if !domain.is_active().unwrap_or(false) {
                return Ok(());
            }
            if overdue {
                tracing::warn!(
                    vm,
                    timeout_s = self.shutdown_timeout.as_secs(),
                    "the guest did not shut down in time: powering it off"
                );
                domain
                    .destroy()
                    .map_err(|e| err("cannot power the domain off", e))
            } else {
                domain
                    .shutdown()
                    .map_err(|e| err("cannot shut the domain down", e))
            }
        })
    }

    fn destroy(&self, vm: &str) -> Result<(), DriverError> {
        self.with_conn(|conn| {
            let Ok(domain) = conn.lookup_domain_by_name(vm) else {
                return Ok(());
            };
            if epoch_of(&domain).is_none() {
                return Err(foreign(vm));
            }
            remove(&domain)
        })?;
        lock(&self.outgoing).remove(vm);
        lock(&self.incoming).remove(vm);
        lock(&self.stopping).remove(vm);
        Ok(())
    }

    fn forget(&self, vm: &str) -> Result<(), DriverError> {
        self.disks
            .remove(vm, paddock_model::vm::DiskPolicy::Local)?;
        if self.disks.shared.is_some() {
            self.disks
                .remove(vm, paddock_model::vm::DiskPolicy::Shared)?;
        }
        Ok(())
    }

    fn changes(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.changes.clone())
    }

    fn console_log(&self, vm: &str) -> Option<PathBuf> {
        Some(self.console_path(vm))
    }

    fn console(&self, vm: &str) -> Result<crate::drivers::ConsoleSession, DriverError> {
        console::open(&self.uri, vm)
    }

    fn addresses(&self, vm: &str) -> Result<Option<Vec<String>>, DriverError> {
        self.with_conn(|conn| {
            let domain = conn
                .lookup_domain_by_name(vm)
                .map_err(|e| err(&format!("no domain {vm} here"), e))?;
            addresses::of(&domain).map(Some)
        })
    }

    fn prepare_incoming(
        &self,
        vm: &str,
        epoch: u64,
        spec: &VmSpec,
        migration: u64,
        listen_host: &str,
    ) -> Result<(), DriverError> {
        // The definition comes with the migration, from the source (every node lays out its
        // VM files alike); make room for it, and the disk files libvirt copies local disks
        // into (overlays on the same image), and the console log's directory.
        self.disks.ensure(vm, spec)?;
        self.console_ready(vm)?;
        self.with_conn(|conn| {
            let Ok(existing) = conn.lookup_domain_by_name(vm) else {
                return Ok(());
            };
            match marks_of(&existing) {
                None => Err(foreign(vm)),
                Some(marks) if marks.epoch == epoch && marks.incoming == Some(migration) => Ok(()),
                // Left from an earlier assignment or migration: it must not run here anyway.
                Some(_) => remove(&existing),
            }
        })?;
        // A VM arriving here is not leaving from here: an earlier outgoing job of it (kept for
        // its figures) must not answer for this migration's switch.
        lock(&self.outgoing).remove(vm);
        lock(&self.incoming).insert(vm.to_string(), self.migration.peer_uri_for(listen_host));
        Ok(())
    }

    fn incoming_ready(&self, vm: &str) -> Result<Option<IncomingReady>, DriverError> {
        Ok(lock(&self.incoming).get(vm).map(|address| IncomingReady {
            port: 0,
            address: Some(address.clone()),
            prepare_ms: 0,
        }))
    }

    fn migrate_out(&self, vm: &str, request: &MigrateRequest) -> Result<(), DriverError> {
        if let Some(running) = lock(&self.outgoing).get(vm) {
            if running.migration == request.migration {
                return Ok(());
            }
            if !running.settled() {
                let why = if running.progress().done {
                    format!(
                        "libvirt is still tearing down {vm}'s migration {} (aborted: its destination became unreachable); try again shortly",
                        running.migration
                    )
                } else {
                    format!(
                        "{vm} is already migrating (migration {})",
                        running.migration
                    )
                };
                return Err(DriverError(why));
            }
        }
        let (domain, xml) = self.with_conn(|conn| {
            let (domain, marks) = leaving(conn, vm)?;
            match state_of(&domain, marks)? {
                InstanceState::Running => {}
                InstanceState::Migrated => return Err(DriverError(format!(
                    "libvirt already moved {vm} away but this paddockd lost track of it before its switch (restarted?); the paused copy at the destination is discarded and the VM starts again from its disks"
                ))),
                other => return Err(DriverError(format!(
                    "{vm} is {other:?} here: only running VMs migrate live"
                ))),
            }
            let xml = domain
                .xml_desc(sys::VIR_DOMAIN_XML_MIGRATABLE | sys::VIR_DOMAIN_XML_SECURE)
                .map_err(|e| err("cannot read the domain XML", e))?;
            Ok((domain, xml))
        })?;
        let marks = Marks {
            epoch: request.target_epoch,
            incoming: Some(request.migration),
        };
        let plan = migration::plan(request, &self.migration, incoming_xml(&xml, marks)?)?;
        let job = Outgoing::start(
            vm,
            request.migration,
            domain,
            request.to.clone(),
            plan,
            request.max_downtime_ms,
            self.migration.timeout,
        )?;
        lock(&self.outgoing).insert(vm.to_string(), job);
        Ok(())
    }

    fn resume_outgoing(&self, vm: &str, request: &MigrateRequest) -> Result<(), DriverError> {
        if self
            .outgoing_of(vm)
            .is_some_and(|job| job.migration == request.migration)
        {
            return Ok(());
        }
        let domain = self.with_conn(|conn| Ok(leaving(conn, vm)?.0))?;
        tracing::info!(
            vm,
            migration = request.migration,
            "taking over the migration an earlier paddockd started"
        );
        let job = Outgoing::adopt(
            vm,
            request.migration,
            domain,
            // Only when to go post-copy matters here: libvirtd already has the rest.
            migration::postcopy_when(request),
            request.max_downtime_ms,
            self.migration.timeout,
        )?;
        lock(&self.outgoing).insert(vm.to_string(), job);
        Ok(())
    }

    fn migration_status(&self, vm: &str) -> Result<MigrationStatus, DriverError> {
        if let Some(job) = self.outgoing_of(vm) {
            return Ok(MigrationStatus {
                role: MigrationRole::Source,
                migration: Some(job.migration),
                progress: Some(job.progress()),
            });
        }
        self.with_conn(|conn| {
            let domain = conn
                .lookup_domain_by_name(vm)
                .map_err(|e| err(&format!("no domain {vm} here"), e))?;
            let marks = marks_of(&domain).ok_or_else(|| foreign(vm))?;
            Ok(MigrationStatus {
                role: if marks.incoming.is_some() {
                    MigrationRole::Destination
                } else {
                    MigrationRole::None
                },
                migration: marks.incoming,
                progress: None,
            })
        })
    }

    fn migration_switch(&self, vm: &str, committed: bool) -> Result<(), DriverError> {
        // The destination's copy carries the incoming mark; only without one is this the
        // source (a finished outgoing job of an earlier migration may still be kept here).
        let arriving_here = self.with_conn(|conn| {
            Ok(conn
                .lookup_domain_by_name(vm)
                .ok()
                .and_then(|d| marks_of(&d))
                .is_some_and(|m| m.incoming.is_some()))
        })?;
        if !arriving_here {
            if let Some(job) = self.outgoing_of(vm) {
                return job.switch(committed);
            }
        }
        if !committed {
            // A destination whose switch was refused: the agent removes the copy.
            return Ok(());
        }
        self.with_conn(|conn| {
            let domain = conn
                .lookup_domain_by_name(vm)
                .map_err(|e| err(&format!("no domain {vm} here"), e))?;
            let marks = marks_of(&domain).ok_or_else(|| foreign(vm))?;
            if marks.incoming.is_none() {
                return Ok(());
            }
            // While libvirt still receives it, its incoming job is active (resuming would
            // wait on that job's lock): wait for the job to end instead.
            let arriving = migration::job_stats(&domain, 0)
                .is_ok_and(|job| job.r#type != sys::VIR_DOMAIN_JOB_NONE as i32);
            if arriving {
                return Err(DriverError(format!(
                    "{vm} is still arriving; it resumes once libvirt has delivered it"
                )));
            }
            let (state, _) = domain
                .state()
                .map_err(|e| err("cannot read the domain state", e))?;
            match state {
                Enum::Known(DomainState::Paused) => domain
                    .resume()
                    .map_err(|e| err("cannot resume the migrated domain", e))?,
                Enum::Known(DomainState::Running | DomainState::Blocked) => {}
                other => {
                    return Err(DriverError(format!(
                        "the incoming domain {vm} is {other:?}, not paused: it cannot take over"
                    )))
                }
            }
            // Resumed first, unmarked second: a crash in between leaves a running domain
            // still marked, which the next switch call unmarks (never a paused one unmarked).
            domain
                .set_metadata(
                    sys::VIR_DOMAIN_METADATA_DESCRIPTION as i32,
                    Some(
                        &Marks {
                            epoch: marks.epoch,
                            incoming: None,
                        }
                        .render(),
                    ),
                    None,
                    None,
                    sys::VIR_DOMAIN_AFFECT_LIVE | sys::VIR_DOMAIN_AFFECT_CONFIG,
                )
                .map_err(|e| err("cannot clear the incoming mark", e))
        })?;
        lock(&self.incoming).remove(vm);
        Ok(())
    }

    fn migration_cancel(&self, vm: &str, reason: &str) -> Result<(), DriverError> {
        match self.outgoing_of(vm) {
            Some(job) => job.cancel(reason),
            None => Ok(()),
        }
    }
}

impl Libvirt {
    fn outgoing_of(&self, vm: &str) -> Option<Arc<Outgoing>> {
        lock(&self.outgoing).get(vm).cloned()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn foreign(vm: &str) -> DriverError {
    DriverError(format!(
        "domain {vm} is not Paddock's; leaving it alone (rename or remove it)"
    ))
}

/// Stops `domain` if it runs and forgets it.
fn remove(domain: &Domain) -> Result<(), DriverError> {
    if domain.is_active().unwrap_or(false) {
        domain
            .destroy()
            .map_err(|e| err("cannot destroy the domain", e))?;
    }
    if domain.is_persistent().unwrap_or(false) {
        domain
            .undefine()
            .map_err(|e| err("cannot undefine the domain", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use std::time::{Duration, Instant};

    use paddock_model::vm::Constraints;

    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            cpus: 1,
            memory_mib: 64,
            disks: vec![],
            labels: BTreeMap::new(),
            ha: false,
            priority: 0,
            constraints: Constraints::default(),
            guest: Default::default(),
        }
    }

    /// The test driver, with VM files under a fresh temporary directory.
    fn test_driver() -> (Libvirt, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = Libvirt::open(LibvirtSettings {
            uri: "test:///default".into(),
            domain_type: DomainType::Auto,
            migration: MigrationConfig::default(),
            network: None,
            shutdown_timeout: Duration::from_secs(60),
            disks: DiskStore {
                local: dir.path().join("vms"),
                shared: None,
            },
        })
        .expect("test:///default is built in");
        (driver, dir)
    }

    /// What the test driver defines for `vm` at `epoch`.
    fn test_xml(vm: &str, epoch: u64) -> String {
        let layout = Layout {
            domain_type: "test",
            disks: &[],
            network: None,
            console_log: "/dev/null",
            shared: false,
        };
        domain::domain_xml(
            vm,
            Marks {
                epoch,
                incoming: None,
            },
            &spec(),
            &layout,
        )
    }

    /// `vm` as listed (the tests share the test driver's state, each with its own VMs).
    fn listed(driver: &Libvirt, vm: &str) -> Option<(u64, InstanceState)> {
        let instances = driver.list().expect("list");
        // The test driver's own "test" domain is not Paddock's and is never listed.
        assert!(instances.iter().all(|i| i.vm != "test"));
        instances
            .into_iter()
            .find(|i| i.vm == vm)
            .map(|i| (i.epoch, i.state))
    }

    #[test]
    fn lifecycle_against_the_test_driver() {
        let (driver, _dir) = test_driver();
        assert_eq!(listed(&driver, "vm1"), None);
        driver.start("vm1", 3, &spec()).expect("start");
        assert_eq!(listed(&driver, "vm1"), Some((3, InstanceState::Running)));
        driver.stop("vm1").expect("stop");
        assert_eq!(listed(&driver, "vm1"), Some((3, InstanceState::Stopped)));
        // A newer epoch replaces the old definition.
        driver.start("vm1", 4, &spec()).expect("restart");
        assert_eq!(listed(&driver, "vm1"), Some((4, InstanceState::Running)));
        driver.destroy("vm1").expect("destroy");
        assert_eq!(listed(&driver, "vm1"), None);
        // Foreign domains are refused, not touched.
        assert!(driver.start("test", 1, &spec()).is_err());
        assert!(driver.destroy("test").is_err());
    }

    #[test]
    fn marks_round_trip_and_reject_foreign_descriptions() {
        for marks in [
            Marks {
                epoch: 9,
                incoming: None,
            },
            Marks {
                epoch: 10,
                incoming: Some(4),
            },
        ] {
            assert_eq!(Marks::parse(&marks.render()), Some(marks));
        }
        assert_eq!(Marks::parse("my web server"), None);
        assert_eq!(Marks::parse("paddock-epoch:x"), None);
        assert_eq!(Marks::parse("paddock-epoch:3 and more"), None);
    }

    #[test]
    fn incoming_xml_replaces_only_the_description() {
        let xml = test_xml("vm1", 9);
        let marks = Marks {
            epoch: 10,
            incoming: Some(4),
        };
        let incoming = incoming_xml(&xml, marks).expect("has a description");
        assert!(incoming.contains("<description>paddock-epoch:10 paddock-incoming:4</description>"));
        assert_eq!(
            incoming.replace("paddock-epoch:10 paddock-incoming:4", "paddock-epoch:9"),
            xml
        );
        assert!(incoming_xml("<domain/>", marks).is_err());
    }

    /// What a finished libvirt migration leaves on its destination: the domain defined from
    /// the source's XML with the incoming mark, paused.
    fn arrive(driver: &Libvirt, vm: &str, epoch: u64, migration: u64) {
        let xml = incoming_xml(
            &test_xml(vm, epoch - 1),
            Marks {
                epoch,
                incoming: Some(migration),
            },
        )
        .expect("xml");
        driver
            .with_conn(|conn| {
                let domain = conn.define_domain_xml(&xml).map_err(|e| err("define", e))?;
                // (The test driver cannot start paused: start, then pause.)
                domain.create().map_err(|e| err("start", e))?;
                domain.suspend().map_err(|e| err("pause", e))
            })
            .expect("arrive");
    }

    #[test]
    fn destination_resumes_only_on_a_committed_switch() {
        let (driver, _dir) = test_driver();
        driver
            .prepare_incoming("vm2", 5, &spec(), 12, "10.0.0.2")
            .expect("prepare");
        let ready = driver.incoming_ready("vm2").expect("ready").expect("some");
        assert_eq!(ready.address.as_deref(), Some("qemu+tls://10.0.0.2/system"));
        arrive(&driver, "vm2", 5, 12);
        assert_eq!(listed(&driver, "vm2"), Some((5, InstanceState::Incoming)));
        let status = driver.migration_status("vm2").expect("status");
        assert_eq!(
            (status.role, status.migration),
            (MigrationRole::Destination, Some(12))
        );
        // A refused switch leaves it paused (the agent destroys it).
        driver.migration_switch("vm2", false).expect("refused");
        assert_eq!(listed(&driver, "vm2"), Some((5, InstanceState::Incoming)));
        driver.migration_switch("vm2", true).expect("committed");
        assert_eq!(listed(&driver, "vm2"), Some((5, InstanceState::Running)));
        // Told again (the source and the agent both tell it): nothing more happens.
        driver.migration_switch("vm2", true).expect("again");
        // A later migration's preparation clears a stale copy of another epoch.
        driver
            .prepare_incoming("vm2", 7, &spec(), 13, "10.0.0.2")
            .expect("prepare again");
        assert_eq!(listed(&driver, "vm2"), None);
        driver.destroy("vm2").expect("destroy");
    }

    #[test]
    fn a_migration_libvirt_cannot_do_leaves_the_source_running() {
        let (driver, _dir) = test_driver();
        driver.start("vm3", 2, &spec()).expect("start");
        let request = MigrateRequest {
            migration: 21,
            to: "test:///default".into(),
            mode: paddock_model::migration::MigrationMode::Auto,
            policy: paddock_model::settings::MigrationPolicy::Postcopy,
            max_downtime_ms: paddock_model::migration::DEFAULT_MAX_DOWNTIME_MS,
            bandwidth: None,
            streams: 1,
            target_epoch: 3,
            copy_storage: false,
        };
        match driver.migrate_out("vm3", &request) {
            // The test driver may refuse at once (no downtime setting)...
            Err(e) => assert!(e.0.starts_with("cannot set the maximum downtime"), "{e}"),
            // ...or take the job and fail it: the outcome is a rolled-back migration.
            Ok(()) => {
                let deadline = Instant::now() + Duration::from_secs(10);
                let progress = loop {
                    let status = driver.migration_status("vm3").expect("status");
                    assert_eq!(status.role, MigrationRole::Source);
                    let progress = status.progress.expect("progress");
                    if progress.done || Instant::now() > deadline {
                        break progress;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                };
                assert!(progress.done && !progress.ready, "{progress:?}");
                assert!(progress.error.is_some(), "{progress:?}");
                // The same migration asked again is not started twice.
                driver.migrate_out("vm3", &request).expect("idempotent");
            }
        }
        assert_eq!(listed(&driver, "vm3"), Some((2, InstanceState::Running)));
        driver.destroy("vm3").expect("destroy");
    }
}
