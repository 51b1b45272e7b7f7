//! The libvirt driver (cargo feature `libvirt`, crate `virt`): one persistent domain per VM,
//! named after it, defined from the spec. Paddock marks its domains with a description
//! `paddock-epoch:N` (the assignment epoch) and leaves every other domain on the host alone.
//!
//! All calls block; the agent runs them on `spawn_blocking`. Domain state is polled on every
//! agent pass (libvirt's event loop is not wired in yet), so a crash shows within a pass.
//!
//! Disks: a disk with an image is attached as a file (`qcow2` for `*.qcow2`, else raw); disks
//! without an image count for placement but are not created (storage pools are not managed
//! yet).

use std::sync::Mutex;

use paddock_model::VmSpec;
use virt::connect::Connect;
use virt::domain::{Domain, DomainShutoffReason, DomainState, DomainStateReason};
use virt::enumutil::Enum;

use super::{Driver, DriverError, Instance, InstanceState};

const EPOCH_MARK: &str = "paddock-epoch:";

pub struct Libvirt {
    uri: String,
    conn: Mutex<Connect>,
}

fn err(context: &str, e: impl std::fmt::Display) -> DriverError {
    DriverError(format!("{context}: {e}"))
}

impl Libvirt {
    /// Connects to `uri` (e.g. `qemu:///system`, `test:///default`).
    pub fn open(uri: &str) -> Result<Libvirt, DriverError> {
        // libvirt prints every error to stderr by default; ours are returned and logged.
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(uri)).map_err(|e| {
            err(
                &format!("cannot connect to libvirt at {uri} (is libvirtd running, and may this user use it?)"),
                e,
            )
        })?;
        Ok(Libvirt {
            uri: uri.to_string(),
            conn: Mutex::new(conn),
        })
    }

    fn with_conn<T>(
        &self,
        call: impl FnOnce(&Connect) -> Result<T, DriverError>,
    ) -> Result<T, DriverError> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| DriverError("the libvirt connection lock is poisoned".into()))?;
        call(&conn)
    }

    /// The domain type libvirt should run: `test` for the test driver, `kvm` where /dev/kvm
    /// exists, else `qemu` (TCG).
    fn domain_type(&self) -> &'static str {
        if self.uri.starts_with("test:") {
            "test"
        } else if std::path::Path::new("/dev/kvm").exists() {
            "kvm"
        } else {
            "qemu"
        }
    }
}

/// The epoch Paddock stored in a domain, or `None` for domains that are not Paddock's.
fn epoch_of(domain: &Domain) -> Option<u64> {
    let description = domain
        .metadata(virt::sys::VIR_DOMAIN_METADATA_DESCRIPTION as i32, None, 0)
        .ok()?;
    description.strip_prefix(EPOCH_MARK)?.trim().parse().ok()
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// Domain XML for `vm` at `epoch`.
pub fn domain_xml(domain_type: &str, vm: &str, epoch: u64, spec: &VmSpec) -> String {
    let mut disks = String::new();
    let targets = ["vda", "vdb", "vdc", "vdd", "vde", "vdf", "vdg", "vdh"];
    for (disk, target) in spec
        .disks
        .iter()
        .filter_map(|d| d.image.as_ref())
        .zip(targets)
    {
        let format = if disk.ends_with(".qcow2") {
            "qcow2"
        } else {
            "raw"
        };
        disks.push_str(&format!(
            "    <disk type='file' device='disk'><driver name='qemu' type='{format}'/><source file='{}'/><target dev='{target}' bus='virtio'/></disk>\n",
            xml_escape(disk)
        ));
    }
    format!(
        "<domain type='{domain_type}'>
  <name>{}</name>
  <description>{EPOCH_MARK}{epoch}</description>
  <memory unit='MiB'>{}</memory>
  <vcpu>{}</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <on_crash>preserve</on_crash>
  <devices>
{disks}    <console type='pty'/>
  </devices>
</domain>
",
        xml_escape(vm),
        spec.memory_mib,
        spec.cpus
    )
}

fn state_of(domain: &Domain) -> Result<InstanceState, DriverError> {
    let (state, reason) = domain
        .state()
        .map_err(|e| err("cannot read the domain state", e))?;
    Ok(match state {
        Enum::Known(DomainState::Running | DomainState::Blocked | DomainState::Paused) => {
            InstanceState::Running
        }
        Enum::Known(DomainState::Shutdown) => InstanceState::Stopping,
        Enum::Known(DomainState::Shutoff) => match reason {
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
                let Some(epoch) = epoch_of(&domain) else {
                    continue;
                };
                instances.push(Instance {
                    vm: domain
                        .name()
                        .map_err(|e| err("cannot read a domain name", e))?,
                    epoch,
                    state: state_of(&domain)?,
                });
            }
            instances.sort_by(|a, b| a.vm.cmp(&b.vm));
            Ok(instances)
        })
    }

    fn start(&self, vm: &str, epoch: u64, spec: &VmSpec) -> Result<(), DriverError> {
        let xml = domain_xml(self.domain_type(), vm, epoch, spec);
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

    fn stop(&self, vm: &str) -> Result<(), DriverError> {
        self.with_conn(|conn| {
            let domain = conn
                .lookup_domain_by_name(vm)
                .map_err(|e| err(&format!("no domain {vm}"), e))?;
            if domain.is_active().unwrap_or(false) {
                domain
                    .shutdown()
                    .map_err(|e| err("cannot shut the domain down", e))?;
            }
            Ok(())
        })
    }

    fn destroy(&self, vm: &str) -> Result<(), DriverError> {
        self.with_conn(|conn| {
            let Ok(domain) = conn.lookup_domain_by_name(vm) else {
                return Ok(());
            };
            if epoch_of(&domain).is_none() {
                return Err(DriverError(format!(
                    "domain {vm} is not Paddock's; leaving it alone"
                )));
            }
            if domain.is_active().unwrap_or(false) {
                domain
                    .destroy()
                    .map_err(|e| err("cannot destroy the domain", e))?;
            }
            domain
                .undefine()
                .map_err(|e| err("cannot undefine the domain", e))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use paddock_model::vm::{Constraints, Disk};

    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            cpus: 1,
            memory_mib: 64,
            disks: vec![Disk {
                size_mib: 1024,
                image: None,
            }],
            labels: BTreeMap::new(),
            ha: false,
            priority: 0,
            constraints: Constraints::default(),
        }
    }

    #[test]
    fn lifecycle_against_the_test_driver() {
        let driver = Libvirt::open("test:///default").expect("test:///default is built in");
        // The test driver's own "test" domain is not Paddock's and is never listed.
        assert!(driver.list().expect("list").is_empty());
        driver.start("vm1", 3, &spec()).expect("start");
        let listed = driver.list().expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].vm.as_str(), listed[0].epoch), ("vm1", 3));
        assert_eq!(listed[0].state, InstanceState::Running);
        driver.stop("vm1").expect("stop");
        assert_eq!(
            driver.list().expect("list")[0].state,
            InstanceState::Stopped
        );
        // A newer epoch replaces the old definition.
        driver.start("vm1", 4, &spec()).expect("restart");
        let listed = driver.list().expect("list");
        assert_eq!(
            (listed[0].epoch, listed[0].state.clone()),
            (4, InstanceState::Running)
        );
        driver.destroy("vm1").expect("destroy");
        assert!(driver.list().expect("list").is_empty());
        // Foreign domains are refused, not touched.
        assert!(driver.start("test", 1, &spec()).is_err());
        assert!(driver.destroy("test").is_err());
    }

    #[test]
    fn boots_a_tiny_vm_with_qemu_where_available() {
        let uri = "qemu:///session";
        let Ok(driver) = Libvirt::open(uri) else {
            eprintln!("skipped: cannot connect to {uri} (no libvirtd/QEMU on this machine)");
            return;
        };
        let mut spec = spec();
        spec.disks.clear();
        match driver.start("paddock-boot-test", 1, &spec) {
            Ok(()) => {
                let state = driver.list().expect("list");
                let _ = driver.destroy("paddock-boot-test");
                assert!(state.iter().any(|i| i.vm == "paddock-boot-test"));
            }
            Err(e) => eprintln!("skipped: {uri} cannot boot a domain here: {e}"),
        }
    }

    #[test]
    fn domain_xml_names_the_epoch_and_escapes_paths() {
        let mut spec = spec();
        spec.disks[0].image = Some("/img/a&b.qcow2".into());
        let xml = domain_xml("kvm", "vm1", 9, &spec);
        assert!(xml.contains("<description>paddock-epoch:9</description>"));
        assert!(xml.contains("/img/a&amp;b.qcow2"));
        assert!(xml.contains("type='qcow2'"));
        assert!(xml.contains("<memory unit='MiB'>64</memory>"));
    }
}
