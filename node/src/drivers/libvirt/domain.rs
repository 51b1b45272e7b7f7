//! Domain XML from a VM's spec (pure): what libvirt is asked to define for a VM at an epoch.
//!
//! - boot: direct kernel boot (`--kernel/--initrd/--cmdline`) or the first disk;
//! - disks: the files [`super::disks`] made (a qcow2 overlay on the image, or an empty disk),
//!   `cache='none'` on shared storage so a second host sees every write;
//! - network: one virtio NIC on the node's `--vm-network`, its MAC derived from the VM's name
//!   (the same on every node, across restarts and migrations);
//! - guest metadata: SMBIOS OEM strings `paddock:hostname=VM` and `paddock:KEY=VALUE`;
//! - console: a serial pty the node logs to `console.log` (what `paddock vm logs` shows);
//! - Paddock's marks in the description (see [`super::Marks`]).

use paddock_model::VmSpec;

use super::Marks;

/// How a VM's NICs attach on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmNetwork {
    /// A libvirt network by name.
    Network(String),
    /// A host bridge by name.
    Bridge(String),
}

impl VmNetwork {
    /// `NAME` or `network:NAME` (a libvirt network), `bridge:NAME` (a host bridge).
    pub fn parse(text: &str) -> Result<VmNetwork, String> {
        let (kind, name) = text.split_once(':').unwrap_or(("network", text));
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        match (kind, ok) {
            (_, false) => Err(format!(
                "--vm-network {text:?}: the name must be 1–64 characters of A-Z, a-z, 0-9, '-', '_', '.'"
            )),
            ("network", true) => Ok(VmNetwork::Network(name.into())),
            ("bridge", true) => Ok(VmNetwork::Bridge(name.into())),
            _ => Err(format!(
                "--vm-network {text:?}: use NAME or network:NAME (a libvirt network) or bridge:NAME (a host bridge)"
            )),
        }
    }
}

/// The stable MAC of `vm`'s first NIC: QEMU's locally administered prefix 52:54:00 and three
/// bytes of a hash of the name (FNV-1a; stable across builds, unlike std's hasher).
pub fn mac_of(vm: &str) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in vm.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let [_, a, b, c] = hash.to_be_bytes();
    format!("52:54:00:{a:02x}:{b:02x}:{c:02x}")
}

/// The stable UUID of `vm`'s domain: the same on every node and across restarts (libvirt
/// refuses to redefine a name under a new UUID; guests see it as their SMBIOS system UUID).
/// Two FNV-1a hashes of the name, formatted as a version-4-shaped UUID.
pub fn uuid_of(vm: &str) -> String {
    let fnv = |seed: u64| {
        let mut hash = seed;
        for byte in vm.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash
    };
    let (high, low) = (fnv(0xcbf2_9ce4_8422_2325), fnv(0x6c62_272e_07bb_0142));
    let high = (high & !0xf000) | 0x4000;
    let low = (low & !(0xc << 60)) | (0x8 << 60);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xffff,
        low >> 48,
        low & 0xffff_ffff_ffff
    )
}

/// One disk file of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFile {
    pub path: String,
    /// `qcow2` or `raw`.
    pub format: &'static str,
}

/// Everything the XML needs besides the spec.
#[derive(Debug, Clone)]
pub struct Layout<'a> {
    /// `kvm`, `qemu` (TCG) or `test`.
    pub domain_type: &'a str,
    pub disks: &'a [DiskFile],
    pub network: Option<&'a VmNetwork>,
    /// Where QEMU logs the serial console.
    pub console_log: &'a str,
    /// The disks are on shared storage.
    pub shared: bool,
}

pub fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// Domain XML for `vm` at `marks`.
pub fn domain_xml(vm: &str, marks: Marks, spec: &VmSpec, layout: &Layout) -> String {
    let guest = &spec.guest;
    let mut os = String::from("<type arch='x86_64'>hvm</type>");
    if let Some(kernel) = &guest.kernel {
        os.push_str(&format!("<kernel>{}</kernel>", xml_escape(kernel)));
        if let Some(initrd) = &guest.initrd {
            os.push_str(&format!("<initrd>{}</initrd>", xml_escape(initrd)));
        }
        if let Some(cmdline) = &guest.cmdline {
            os.push_str(&format!("<cmdline>{}</cmdline>", xml_escape(cmdline)));
        }
    }
    // The test driver knows no SMBIOS.
    let smbios = layout.domain_type != "test";
    if smbios {
        os.push_str("<smbios mode='sysinfo'/>");
    }
    let mut devices = String::new();
    let targets = ["vda", "vdb", "vdc", "vdd", "vde", "vdf", "vdg", "vdh"];
    let cache = if layout.shared { " cache='none'" } else { "" };
    for (disk, target) in layout.disks.iter().zip(targets) {
        devices.push_str(&format!(
            "    <disk type='file' device='disk'><driver name='qemu' type='{}'{cache}/><source file='{}'/><target dev='{target}' bus='virtio'/></disk>\n",
            disk.format,
            xml_escape(&disk.path)
        ));
    }
    if let Some(network) = layout.network {
        let source = match network {
            VmNetwork::Network(name) => {
                format!("type='network'><source network='{}'/>", xml_escape(name))
            }
            VmNetwork::Bridge(name) => {
                format!("type='bridge'><source bridge='{}'/>", xml_escape(name))
            }
        };
        devices.push_str(&format!(
            "    <interface {source}<mac address='{}'/><model type='virtio'/></interface>\n",
            mac_of(vm)
        ));
    }
    if layout.domain_type == "test" {
        devices.push_str("    <console type='pty'/>\n");
    } else {
        devices.push_str(&format!(
            "    <serial type='pty'><log file='{}' append='on'/><target port='0'/></serial>\n    <console type='pty'><target type='serial' port='0'/></console>\n",
            xml_escape(layout.console_log)
        ));
    }
    let mut sysinfo = String::new();
    if smbios {
        sysinfo.push_str("  <sysinfo type='smbios'><oemStrings>");
        sysinfo.push_str(&format!(
            "<entry>paddock:hostname={}</entry>",
            xml_escape(vm)
        ));
        for (key, value) in &guest.env {
            sysinfo.push_str(&format!(
                "<entry>paddock:{}={}</entry>",
                xml_escape(key),
                xml_escape(value)
            ));
        }
        sysinfo.push_str("</oemStrings></sysinfo>\n");
    }
    format!(
        "<domain type='{domain_type}'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <description>{marks}</description>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>{cpus}</vcpu>
{sysinfo}  <os>{os}</os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
{devices}  </devices>
</domain>
",
        domain_type = layout.domain_type,
        name = xml_escape(vm),
        uuid = uuid_of(vm),
        marks = marks.render(),
        memory = spec.memory_mib,
        cpus = spec.cpus,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use paddock_model::vm::{Constraints, DiskPolicy, Guest};

    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            cpus: 2,
            memory_mib: 256,
            disks: vec![],
            labels: BTreeMap::new(),
            ha: true,
            priority: 0,
            constraints: Constraints::default(),
            guest: Guest {
                kernel: Some("/boot/vmlinuz".into()),
                initrd: Some("/boot/initrd&1".into()),
                cmdline: Some("console=ttyS0 mib=64".into()),
                env: BTreeMap::from([("role".into(), "web<1>".into())]),
                disk_policy: DiskPolicy::Shared,
            },
        }
    }

    fn marks() -> Marks {
        Marks {
            epoch: 4,
            incoming: None,
        }
    }

    #[test]
    fn direct_boot_disks_network_metadata_and_console() {
        let disks = [DiskFile {
            path: "/srv/shared/web-1/disk0.qcow2".into(),
            format: "qcow2",
        }];
        let network = VmNetwork::Bridge("br0".into());
        let layout = Layout {
            domain_type: "qemu",
            disks: &disks,
            network: Some(&network),
            console_log: "/var/lib/paddock/vms/web-1/console.log",
            shared: true,
        };
        let xml = domain_xml("web-1", marks(), &spec(), &layout);
        assert!(xml.starts_with("<domain type='qemu'>"), "{xml}");
        assert!(xml.contains("<kernel>/boot/vmlinuz</kernel><initrd>/boot/initrd&amp;1</initrd><cmdline>console=ttyS0 mib=64</cmdline>"), "{xml}");
        assert!(xml.contains("<description>paddock-epoch:4</description>"));
        assert!(
            xml.contains(
                "type='qcow2' cache='none'/><source file='/srv/shared/web-1/disk0.qcow2'/>"
            ),
            "{xml}"
        );
        assert!(xml.contains(&format!("<mac address='{}'/>", mac_of("web-1"))));
        assert!(xml.contains("<source bridge='br0'/>"));
        assert!(
            xml.contains(
                "<entry>paddock:hostname=web-1</entry><entry>paddock:role=web&lt;1&gt;</entry>"
            ),
            "{xml}"
        );
        assert!(xml.contains("<log file='/var/lib/paddock/vms/web-1/console.log' append='on'/>"));
        assert!(xml.contains("<vcpu>2</vcpu>") && xml.contains("<memory unit='MiB'>256</memory>"));
    }

    #[test]
    fn the_uuid_is_stable_and_well_formed() {
        let uuid = uuid_of("web-1");
        assert_eq!(uuid, uuid_of("web-1"));
        assert_ne!(uuid, uuid_of("web-2"));
        let parts: Vec<&str> = uuid.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "{uuid}");
        assert!(
            matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "{uuid}"
        );
    }

    #[test]
    fn the_mac_is_stable_and_locally_administered() {
        assert_eq!(mac_of("web-1"), mac_of("web-1"));
        assert_ne!(mac_of("web-1"), mac_of("web-2"));
        assert!(mac_of("x").starts_with("52:54:00:"));
        assert_eq!(mac_of("x").len(), 17);
    }

    #[test]
    fn networks_parse_with_a_clear_refusal() {
        assert_eq!(
            VmNetwork::parse("default"),
            Ok(VmNetwork::Network("default".into()))
        );
        assert_eq!(
            VmNetwork::parse("bridge:br0"),
            Ok(VmNetwork::Bridge("br0".into()))
        );
        assert!(VmNetwork::parse("vlan:3").is_err_and(|e| e.contains("bridge:NAME")));
        assert!(VmNetwork::parse("bridge:").is_err());
        assert!(VmNetwork::parse("network:a'b").is_err());
    }
}
