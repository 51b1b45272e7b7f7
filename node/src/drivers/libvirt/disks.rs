//! A VM's disk files: one directory per VM, `disk{N}.qcow2` in it, made with `qemu-img`.
//!
//! - a disk with an image is a qcow2 overlay on it (`qemu-img create -b IMAGE -F FORMAT`): two
//!   VMs of one image never share a writable file, and the image is never written;
//! - a disk without an image is an empty qcow2 disk of the spec's size;
//! - policy `local`: the directory is under the node's `vm_dir`; policy `shared`: under
//!   `--shared-storage`, which every node mounts at the same path (NFS, CephFS... in
//!   production), so an HA restart or a migration elsewhere reuses the same files.
//!
//! Existing files are reused (a restart on the same node, or anywhere for shared disks). New
//! files are written under a temporary name and renamed, so a crash never leaves a half-made
//! disk that would be taken for a real one.

use std::path::{Path, PathBuf};
use std::process::Command;

use paddock_model::vm::DiskPolicy;
use paddock_model::VmSpec;

use super::domain::DiskFile;
use crate::drivers::DriverError;

#[derive(Debug, Clone)]
pub struct DiskStore {
    /// Local VM directories (`DATA/vms`).
    pub local: PathBuf,
    /// `--shared-storage`, if this node has it.
    pub shared: Option<PathBuf>,
}

impl DiskStore {
    /// The directory holding `vm`'s files for `policy`.
    pub fn dir(&self, vm: &str, policy: DiskPolicy) -> Result<PathBuf, DriverError> {
        match (policy, &self.shared) {
            (DiskPolicy::Local, _) => Ok(self.local.join(vm)),
            (DiskPolicy::Shared, Some(shared)) => Ok(shared.join(vm)),
            (DiskPolicy::Shared, None) => Err(DriverError(format!(
                "{vm} has shared disks but this node has no --shared-storage; start paddockd with --shared-storage DIR (the same shared mount on every node) or create the VM with --disk-policy local"
            ))),
        }
    }

    /// Makes `vm`'s disks if they do not exist yet; returns them in order.
    pub fn ensure(&self, vm: &str, spec: &VmSpec) -> Result<Vec<DiskFile>, DriverError> {
        let dir = self.dir(vm, spec.guest.disk_policy)?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| DriverError(format!("cannot create {}: {e}", dir.display())))?;
        let mut files = Vec::with_capacity(spec.disks.len());
        for (i, disk) in spec.disks.iter().enumerate() {
            let path = dir.join(format!("disk{i}.qcow2"));
            if !path.exists() {
                let part = dir.join(format!("disk{i}.qcow2.part"));
                let _ = std::fs::remove_file(&part);
                let mut create = Command::new("qemu-img");
                create.args(["create", "-q", "-f", "qcow2"]);
                match &disk.image {
                    Some(image) => {
                        let format = image_format(Path::new(image))?;
                        create.arg("-b").arg(image).arg("-F").arg(format).arg(&part);
                    }
                    None => {
                        create.arg(&part).arg(format!("{}M", disk.size_mib.max(1)));
                    }
                }
                run(create, "create a disk")?;
                std::fs::rename(&part, &path).map_err(|e| {
                    DriverError(format!("cannot move the new disk into place: {e}"))
                })?;
            }
            files.push(DiskFile {
                path: path.display().to_string(),
                format: "qcow2",
            });
        }
        Ok(files)
    }

    /// Removes `vm`'s files (the VM is deleted from the cluster); images are never touched.
    pub fn remove(&self, vm: &str, policy: DiskPolicy) -> Result<(), DriverError> {
        let dir = self.dir(vm, policy)?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DriverError(format!("cannot remove {}: {e}", dir.display()))),
        }
    }
}

/// An image's format as qemu-img sees it (`qcow2`, `raw`...).
pub fn image_format(image: &Path) -> Result<String, DriverError> {
    if !image.is_file() {
        return Err(DriverError(format!(
            "image {} does not exist on this node; every node that may run the VM needs it at the same path",
            image.display()
        )));
    }
    let mut info = Command::new("qemu-img");
    info.args(["info", "--output=json", "-U"]).arg(image);
    let out = run(info, "read the image")?;
    let json: serde_json::Value = serde_json::from_slice(&out)
        .map_err(|e| DriverError(format!("qemu-img info printed no JSON: {e}")))?;
    json.get("format")
        .and_then(|f| f.as_str())
        .map(String::from)
        .ok_or_else(|| {
            DriverError(format!(
                "qemu-img cannot tell the format of {}",
                image.display()
            ))
        })
}

fn run(mut command: Command, what: &str) -> Result<Vec<u8>, DriverError> {
    let out = command.output().map_err(|e| {
        DriverError(format!(
            "cannot {what}: qemu-img could not run ({e}); install qemu-utils"
        ))
    })?;
    if !out.status.success() {
        return Err(DriverError(format!(
            "cannot {what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use paddock_model::vm::{Constraints, Disk, Guest};

    use super::*;

    fn spec(disks: Vec<Disk>, policy: DiskPolicy) -> VmSpec {
        VmSpec {
            cpus: 1,
            memory_mib: 64,
            disks,
            labels: BTreeMap::new(),
            ha: false,
            priority: 0,
            constraints: Constraints::default(),
            guest: Guest {
                disk_policy: policy,
                ..Guest::default()
            },
        }
    }

    #[test]
    fn overlays_on_an_image_and_empty_disks_with_qemu_img() {
        if Command::new("qemu-img").arg("--version").output().is_err() {
            eprintln!("skipped: qemu-img is not installed");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("base.raw");
        std::fs::write(&image, vec![7u8; 1 << 20]).expect("image");
        let store = DiskStore {
            local: dir.path().join("vms"),
            shared: None,
        };
        let spec = spec(
            vec![
                Disk {
                    size_mib: 1,
                    image: Some(image.display().to_string()),
                },
                Disk {
                    size_mib: 8,
                    image: None,
                },
            ],
            DiskPolicy::Local,
        );
        let files = store.ensure("a", &spec).expect("disks");
        assert_eq!(files.len(), 2);
        let info = |path: &str| {
            let out = Command::new("qemu-img")
                .args(["info", "--output=json", "-U", path])
                .output()
                .expect("info");
            serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
        };
        let overlay = info(&files[0].path);
        assert_eq!(overlay["format"], "qcow2");
        assert_eq!(overlay["backing-filename"], image.display().to_string());
        assert_eq!(overlay["backing-filename-format"], "raw");
        assert_eq!(info(&files[1].path)["virtual-size"], 8 << 20);
        // Made once: a second call reuses the files (a restart keeps the guest's writes).
        std::fs::write(&files[1].path, b"written by the guest").expect("write");
        store.ensure("a", &spec).expect("again");
        assert_eq!(
            std::fs::read(&files[1].path).expect("read"),
            b"written by the guest"
        );
        // A second VM of the same image gets its own overlay.
        let other = store.ensure("b", &spec).expect("b");
        assert_ne!(other[0].path, files[0].path);
        store.remove("a", DiskPolicy::Local).expect("remove");
        assert!(!Path::new(&files[0].path).exists());
        assert!(image.exists(), "the image is never removed");
    }

    #[test]
    fn shared_disks_need_shared_storage_and_a_missing_image_is_named() {
        let store = DiskStore {
            local: "/nonexistent/vms".into(),
            shared: None,
        };
        let refused = store
            .ensure("a", &spec(vec![], DiskPolicy::Shared))
            .expect_err("no shared storage");
        assert!(refused.0.contains("--shared-storage"), "{refused}");
        let missing = image_format(Path::new("/nonexistent/image.qcow2")).expect_err("missing");
        assert!(
            missing.0.contains("does not exist on this node"),
            "{missing}"
        );
    }
}
