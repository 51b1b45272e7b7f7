//! Disk images in the replicated state: what each image is (format, size, sha256) and which
//! nodes hold a verified copy of it.
//!
//! The bytes never go through the log. `paddock image import` streams the file to one node,
//! which stores it under its sha256 and proposes [`Command::ImageRegister`]; every other node
//! fetches it from a holder over the cluster's mutual TLS, checks the hash and announces itself
//! with [`Command::ImageHeld`] (as Incus replicates images between cluster members). A VM disk
//! names an image by its name; the node it runs on resolves the name to its local copy.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::command::{Command, Outcome, Rejection, Response};
use crate::state::ClusterState;

/// Formats a disk image may have.
pub const FORMATS: &[&str] = &["qcow2", "raw"];

/// Largest image accepted (1 TiB).
pub const MAX_IMAGE_BYTES: u64 = 1 << 40;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// `qcow2` or `raw`.
    pub format: String,
    pub size_bytes: u64,
    /// Lower-case hex SHA-256 of the file's bytes.
    pub sha256: String,
    pub imported_at_ms: u64,
    /// Nodes holding a copy whose hash they checked.
    pub holders: BTreeSet<String>,
}

/// A disk's `image` names a registered image unless it is an absolute path (a file the
/// operator placed at the same path on every node).
pub fn is_image_name(reference: &str) -> bool {
    !reference.starts_with('/')
}

/// Image names follow the VM name rules.
pub fn validate_image_name(name: &str) -> Result<(), String> {
    crate::vm::validate_vm_name(name).map_err(|e| e.replacen("VM name", "image name", 1))
}

pub fn validate_sha256(sha: &str) -> Result<(), String> {
    if sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(format!("{sha:?} is not a lower-case hex SHA-256"))
    }
}

/// State-independent checks of the image commands.
pub(crate) fn validate(command: &Command) -> Result<(), String> {
    match command {
        Command::ImageRegister {
            name,
            format,
            size_bytes,
            sha256,
            node,
        } => {
            validate_image_name(name)?;
            crate::ids::validate_node_name(node)?;
            if !FORMATS.contains(&format.as_str()) {
                return Err(format!("image format must be qcow2 or raw, not {format:?}"));
            }
            if *size_bytes == 0 || *size_bytes > MAX_IMAGE_BYTES {
                return Err(format!(
                    "an image must be 1 byte–1 TiB, not {size_bytes} bytes"
                ));
            }
            validate_sha256(sha256)
        }
        Command::ImageHeld { node, name, sha256 } => {
            validate_image_name(name)?;
            crate::ids::validate_node_name(node)?;
            validate_sha256(sha256)
        }
        Command::ImageDelete { name } => validate_image_name(name),
        _ => Ok(()),
    }
}

impl ClusterState {
    pub(crate) fn apply_image_command(&mut self, command: &Command, at_ms: u64) -> Outcome {
        match command {
            Command::ImageRegister {
                name,
                format,
                size_bytes,
                sha256,
                node,
            } => {
                if let Some(image) = self.images.get_mut(name) {
                    if image.sha256 != *sha256 {
                        return Err(Rejection::AlreadyExists {
                            kind: "image".into(),
                            name: format!(
                                "{name} (with other content, sha256 {}…; delete it first or import under another name)",
                                &image.sha256[..12]
                            ),
                        });
                    }
                    image.holders.insert(node.clone());
                    return Ok(Response::Done);
                }
                self.events.push(
                    at_ms,
                    crate::events::EventKind::ImageRegistered,
                    name,
                    format!("image {name} imported on {node} ({format}, {size_bytes} bytes)"),
                );
                self.images.insert(
                    name.clone(),
                    Image {
                        format: format.clone(),
                        size_bytes: *size_bytes,
                        sha256: sha256.clone(),
                        imported_at_ms: at_ms,
                        holders: BTreeSet::from([node.clone()]),
                    },
                );
                Ok(Response::Done)
            }
            Command::ImageHeld { node, name, sha256 } => {
                // A copy of an image since deleted or replaced is no copy of this one.
                if let Some(image) = self.images.get_mut(name) {
                    if image.sha256 == *sha256 && self.members.contains_key(node) {
                        image.holders.insert(node.clone());
                    }
                }
                Ok(Response::Done)
            }
            Command::ImageDelete { name } => {
                if !self.images.contains_key(name) {
                    return Err(Rejection::not_found("image", name));
                }
                let users: Vec<&str> = self
                    .vms
                    .values()
                    .filter(|vm| {
                        vm.spec
                            .disks
                            .iter()
                            .any(|d| d.image.as_deref() == Some(name))
                    })
                    .map(|vm| vm.name.as_str())
                    .take(5)
                    .collect();
                if !users.is_empty() {
                    return Err(Rejection::precondition(format!(
                        "image {name} is used by the disks of {}; delete those VMs first",
                        users.join(", ")
                    )));
                }
                self.images.remove(name);
                self.events.push(
                    at_ms,
                    crate::events::EventKind::ImageDeleted,
                    name,
                    format!("image {name} deleted; every node removes its copy"),
                );
                Ok(Response::Done)
            }
            other => Err(Rejection::Invalid {
                reason: format!("not an image command: {other:?}"),
            }),
        }
    }

    /// Refuses a VM whose disks name an image that is not registered.
    pub(crate) fn check_images(&self, spec: &crate::VmSpec) -> Result<(), Rejection> {
        for reference in spec.disks.iter().filter_map(|d| d.image.as_deref()) {
            if is_image_name(reference) && !self.images.contains_key(reference) {
                return Err(Rejection::precondition(format!(
                    "image {reference} is not registered; import it with `paddock image import {reference} FILE` (or give an absolute path present on every node)"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Proposal;
    use crate::state::{Member, MemberRole};
    use crate::ClientRequest;

    const SHA_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const SHA_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn run(state: &mut ClusterState, command: Command) -> Outcome {
        state
            .apply(&Proposal {
                at_ms: 1_000,
                requests: vec![ClientRequest::internal(command)],
            })
            .remove(0)
    }

    fn register(name: &str, sha: &str, node: &str) -> Command {
        Command::ImageRegister {
            name: name.into(),
            format: "qcow2".into(),
            size_bytes: 4096,
            sha256: sha.into(),
            node: node.into(),
        }
    }

    fn with_members(names: &[&str]) -> ClusterState {
        let mut state = ClusterState::default();
        state.set_members(names.iter().map(|n| {
            (
                n.to_string(),
                Member {
                    id: crate::node_id_for_name(n),
                    address: format!("{n}:7000"),
                    role: MemberRole::Voter,
                },
            )
        }));
        state
    }

    #[test]
    fn register_hold_and_replace_refused() {
        let mut state = with_members(&["n1", "n2"]);
        run(&mut state, register("debian", SHA_A, "n1")).expect("register");
        let held = |state: &ClusterState| state.images["debian"].holders.clone();
        assert_eq!(held(&state), BTreeSet::from(["n1".to_string()]));
        // A copy with the right hash counts; a wrong hash or a non-member does not.
        for (node, sha) in [("n2", SHA_B), ("n9", SHA_A), ("n2", SHA_A)] {
            let command = Command::ImageHeld {
                node: node.into(),
                name: "debian".into(),
                sha256: sha.into(),
            };
            run(&mut state, command).expect("held");
        }
        assert_eq!(
            held(&state),
            BTreeSet::from(["n1".to_string(), "n2".to_string()])
        );
        // Same name, same bytes: another holder; other bytes: refused.
        run(&mut state, register("debian", SHA_A, "n2")).expect("again");
        let refused = run(&mut state, register("debian", SHA_B, "n1")).expect_err("refused");
        assert_eq!(refused.kind(), crate::RejectionKind::AlreadyExists);
    }

    #[test]
    fn bad_input_is_refused_before_apply() {
        let mut state = ClusterState::default();
        for bad in [
            register("Debian", SHA_A, "n1"),
            register("debian", "ABC", "n1"),
            Command::ImageRegister {
                name: "d".into(),
                format: "vmdk".into(),
                size_bytes: 1,
                sha256: SHA_A.into(),
                node: "n1".into(),
            },
            Command::ImageRegister {
                name: "d".into(),
                format: "raw".into(),
                size_bytes: 0,
                sha256: SHA_A.into(),
                node: "n1".into(),
            },
        ] {
            let refused = run(&mut state, bad).expect_err("refused");
            assert_eq!(refused.kind(), crate::RejectionKind::Invalid, "{refused}");
        }
        assert!(state.images.is_empty());
    }

    #[test]
    fn an_image_in_use_is_not_deleted_and_vms_need_registered_images() {
        let mut state = with_members(&["n1"]);
        let spec = crate::VmSpec {
            cpus: 1,
            memory_mib: 64,
            disks: vec![crate::vm::Disk {
                size_mib: 0,
                image: Some("debian".into()),
            }],
            labels: Default::default(),
            ha: false,
            priority: 0,
            constraints: Default::default(),
            guest: Default::default(),
        };
        let create = Command::VmCreate {
            name: "web".into(),
            spec,
            desired: crate::Desired::Running,
        };
        let refused = run(&mut state, create.clone()).expect_err("refused");
        assert!(
            refused.to_string().contains("paddock image import"),
            "{refused}"
        );
        run(&mut state, register("debian", SHA_A, "n1")).expect("register");
        run(&mut state, create).expect("create");
        let delete = Command::ImageDelete {
            name: "debian".into(),
        };
        let refused = run(&mut state, delete.clone()).expect_err("refused");
        assert!(refused.to_string().contains("web"), "{refused}");
        run(&mut state, Command::VmDelete { name: "web".into() }).expect("delete vm");
        run(&mut state, delete.clone()).expect("delete image");
        assert_eq!(
            run(&mut state, delete).expect_err("refused").kind(),
            crate::RejectionKind::NotFound
        );
    }
}
