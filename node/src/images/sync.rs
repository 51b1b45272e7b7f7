//! Keeps this node's image store matching the replicated image list.
//!
//! [`plan`] decides (pure, over the replica and the files held): announce a held copy the
//! cluster does not know of, fetch a missing image from a holder, remove a file no image names
//! any more. [`run`] carries the steps out: a fetch streams the bytes from the holder over the
//! cluster's mutual TLS into an [`super::ImageWriter`], which refuses a copy whose hash differs
//! from the registered one. Every node keeps every image (like Incus with
//! `cluster.images_minimal_replica=-1`), so an HA restart never waits for a copy from a dead
//! node; a start that finds its image missing waits for the fetch.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use paddock_api::pb;
use paddock_model::{ClusterState, Command, Health};
use paddock_raft::SharedState;
use tokio::sync::watch;

use super::{ImageStore, LocalImage, StoreError};
use crate::proposer::Proposer;

/// A file no image names is kept this long (an import may be between its rename and the
/// apply of its registration).
pub const KEEP_UNNAMED: Duration = Duration::from_secs(10 * 60);
/// A failed fetch of an image is tried again after this.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// A fetch whose holder sends nothing for this long is given up (and tried again later).
const STALL_AFTER: Duration = Duration::from_secs(30);
/// Passes run on applied changes and at least this often.
const PASS_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A verified copy is here and the cluster does not list this node as a holder.
    Announce { name: String, sha256: String },
    /// Missing here: fetch from these holders (addresses), best first.
    Fetch {
        name: String,
        sha256: String,
        size_bytes: u64,
        from: Vec<(String, String)>,
    },
    /// A file no image names any more.
    Remove { sha256: String },
}

/// The steps that bring `local` to the replica's image list, announcements first, then
/// fetches in name order, then removals. A file is removed once no image names it: at once
/// when an image of the replica named it earlier (`known`, the hashes this process has seen
/// named: the image was deleted), else only when it is older than [`KEEP_UNNAMED`].
pub fn plan(
    me: &str,
    state: &ClusterState,
    local: &[LocalImage],
    known: &BTreeSet<String>,
    now: SystemTime,
) -> Vec<Step> {
    let held = |sha: &str| local.iter().any(|l| l.sha256 == sha);
    let mut announce = Vec::new();
    let mut fetch = Vec::new();
    for (name, image) in &state.images {
        if held(&image.sha256) {
            if !image.holders.contains(me) {
                announce.push(Step::Announce {
                    name: name.clone(),
                    sha256: image.sha256.clone(),
                });
            }
            continue;
        }
        // Holders that are members, ready ones first (a down node answers nothing).
        let mut from: Vec<(bool, String, String)> = image
            .holders
            .iter()
            .filter(|h| h.as_str() != me)
            .filter_map(|h| {
                let member = state.members.get(h)?;
                let ready = state
                    .nodes
                    .get(h)
                    .is_some_and(|n| n.health == Health::Ready);
                Some((!ready, h.clone(), member.address.clone()))
            })
            .collect();
        from.sort();
        if !from.is_empty() {
            fetch.push(Step::Fetch {
                name: name.clone(),
                sha256: image.sha256.clone(),
                size_bytes: image.size_bytes,
                from: from.into_iter().map(|(_, n, a)| (n, a)).collect(),
            });
        }
    }
    let named = |sha: &str| state.images.values().any(|i| i.sha256 == sha);
    let remove = local
        .iter()
        .filter(|l| !named(&l.sha256))
        .filter(|l| {
            known.contains(&l.sha256)
                || now.duration_since(l.modified).unwrap_or_default() >= KEEP_UNNAMED
        })
        .map(|l| Step::Remove {
            sha256: l.sha256.clone(),
        });
    announce.into_iter().chain(fetch).chain(remove).collect()
}

pub struct Sync {
    pub name: String,
    pub store: ImageStore,
    pub proposer: Arc<Proposer>,
    pub shared: SharedState,
    pub raft: paddock_raft::Raft,
}

impl Sync {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut applied = self.raft.metrics();
        // Images whose fetch failed lately, by sha, so one bad holder does not spin.
        let mut failed: BTreeMap<String, Instant> = BTreeMap::new();
        let mut known = BTreeSet::new();
        loop {
            failed.retain(|_, at| at.elapsed() < RETRY_AFTER);
            let seen = self.shared.read().state.images.clone();
            if let Err(e) = self.pass(&mut failed, &mut known).await {
                tracing::warn!(error = %e, "image sync pass failed; retrying");
            }
            // Applied entries that leave the image list alone (most of them) wake no pass:
            // a pass reads the store's directory.
            let periodic = tokio::time::sleep(PASS_EVERY);
            tokio::pin!(periodic);
            loop {
                tokio::select! {
                    _ = applied.changed() => {
                        if self.shared.read().state.images != seen {
                            break;
                        }
                    }
                    _ = &mut periodic => break,
                    _ = shutdown.changed() => return,
                }
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    async fn pass(
        &self,
        failed: &mut BTreeMap<String, Instant>,
        known: &mut BTreeSet<String>,
    ) -> anyhow::Result<()> {
        let store = self.store.clone();
        let local = tokio::task::spawn_blocking(move || store.local()).await??;
        let steps = {
            let shared = self.shared.read();
            let steps = plan(&self.name, &shared.state, &local, known, SystemTime::now());
            known.extend(shared.state.images.values().map(|i| i.sha256.clone()));
            steps
        };
        for step in steps {
            match step {
                Step::Announce { name, sha256 } => {
                    self.propose(Command::ImageHeld {
                        node: self.name.clone(),
                        name,
                        sha256,
                    })
                    .await?;
                }
                Step::Fetch {
                    name,
                    sha256,
                    size_bytes,
                    from,
                } => {
                    if failed.contains_key(&sha256) {
                        continue;
                    }
                    match self.fetch(&name, &sha256, size_bytes, &from).await {
                        Ok(()) => {
                            self.propose(Command::ImageHeld {
                                node: self.name.clone(),
                                name,
                                sha256,
                            })
                            .await?;
                        }
                        Err(e) => {
                            tracing::warn!(image = %name, error = %e, "cannot fetch the image; trying again shortly");
                            failed.insert(sha256, Instant::now());
                        }
                    }
                }
                Step::Remove { sha256 } => {
                    tracing::info!(%sha256, "removing an image the cluster no longer has");
                    self.store.remove(&sha256)?;
                    known.remove(&sha256);
                }
            }
        }
        Ok(())
    }

    async fn propose(&self, command: Command) -> anyhow::Result<()> {
        self.proposer
            .write(paddock_model::ClientRequest::internal(command))
            .await?
            .map(|_| ())
            .map_err(Into::into)
    }

    /// Fetches the image from the first holder that sends a correct copy.
    async fn fetch(
        &self,
        name: &str,
        sha256: &str,
        size: u64,
        from: &[(String, String)],
    ) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        for (node, address) in from {
            let started = Instant::now();
            match self.fetch_from(address, name, sha256, size).await {
                Ok(()) => {
                    let secs = started.elapsed().as_secs_f64().max(0.001);
                    tracing::info!(image = %name, from = %node, mib = size >> 20, mib_per_s = format!("{:.0}", size as f64 / secs / 1048576.0), "image fetched and verified");
                    return Ok(());
                }
                Err(e) => errors.push(format!("{node}: {e}")),
            }
        }
        anyhow::bail!("{}", errors.join("; "))
    }

    async fn fetch_from(
        &self,
        address: &str,
        name: &str,
        sha256: &str,
        size: u64,
    ) -> anyhow::Result<()> {
        let channel = self.proposer.channel(address)?;
        let mut stream = pb::images_client::ImagesClient::new(channel)
            .fetch(pb::ImageFetchRequest {
                name: name.to_string(),
                sha256: sha256.to_string(),
            })
            .await?
            .into_inner();
        let mut writer = self.store.writer()?;
        loop {
            // A holder that stops sending must not hold up every other image.
            let next = tokio::time::timeout(STALL_AFTER, stream.message())
                .await
                .map_err(|_| anyhow::anyhow!("the holder sent nothing for {STALL_AFTER:?}"))??;
            let Some(chunk) = next else {
                break;
            };
            tokio::task::block_in_place(|| writer.write(&chunk.data))?;
            if writer.written() > size {
                anyhow::bail!("the holder sent more than the image's {size} bytes");
            }
        }
        let expected = sha256.to_string();
        tokio::task::spawn_blocking(move || writer.finish(size, Some(&expected)))
            .await?
            .map_err(|e: StoreError| anyhow::anyhow!(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paddock_model::image::Image;
    use paddock_model::{Member, MemberRole, Node};

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn state(images: &[(&str, &str, &[&str])], down: &[&str]) -> ClusterState {
        let mut state = ClusterState::default();
        for n in ["n1", "n2", "n3"] {
            state.members.insert(
                n.into(),
                Member {
                    id: 1,
                    address: format!("{n}:7000"),
                    role: MemberRole::Voter,
                },
            );
            state.nodes.insert(
                n.into(),
                Node {
                    name: n.into(),
                    capacity: Default::default(),
                    allocated: Default::default(),
                    labels: Default::default(),
                    driver: "memvm".into(),
                    health: if down.contains(&n) {
                        Health::Down
                    } else {
                        Health::Ready
                    },
                    cordoned: false,
                    maintenance: false,
                    registered_ms: 0,
                    drain: None,
                },
            );
        }
        for (name, sha, holders) in images {
            state.images.insert(
                name.to_string(),
                Image {
                    format: "raw".into(),
                    size_bytes: 10,
                    sha256: sha.to_string(),
                    imported_at_ms: 0,
                    holders: holders.iter().map(|h| h.to_string()).collect(),
                },
            );
        }
        state
    }

    fn local(sha: &str, age: Duration) -> LocalImage {
        LocalImage {
            sha256: sha.into(),
            modified: SystemTime::UNIX_EPOCH + Duration::from_secs(100_000) - age,
        }
    }

    const NOW: Duration = Duration::from_secs(100_000);

    #[test]
    fn missing_images_are_fetched_from_ready_holders_first() {
        let state = state(&[("deb", A, &["n2", "n3"])], &["n2"]);
        let steps = plan(
            "n1",
            &state,
            &[],
            &BTreeSet::new(),
            SystemTime::UNIX_EPOCH + NOW,
        );
        assert_eq!(
            steps,
            [Step::Fetch {
                name: "deb".into(),
                sha256: A.into(),
                size_bytes: 10,
                from: vec![
                    ("n3".into(), "n3:7000".into()),
                    ("n2".into(), "n2:7000".into())
                ],
            }]
        );
        // Held and listed: nothing to do. Held, not listed: announce.
        let held = [local(A, Duration::ZERO)];
        let listed = super::tests::state(&[("deb", A, &["n1"])], &[]);
        assert!(plan(
            "n1",
            &listed,
            &held,
            &BTreeSet::new(),
            SystemTime::UNIX_EPOCH + NOW
        )
        .is_empty());
        assert_eq!(
            plan(
                "n1",
                &state,
                &held,
                &BTreeSet::new(),
                SystemTime::UNIX_EPOCH + NOW
            ),
            [Step::Announce {
                name: "deb".into(),
                sha256: A.into()
            }]
        );
    }

    #[test]
    fn unnamed_files_are_removed_only_once_old() {
        let state = state(&[("deb", A, &["n1"])], &[]);
        let files = [
            local(A, Duration::from_secs(3600)),
            local(B, Duration::from_secs(5)),
        ];
        assert!(plan(
            "n1",
            &state,
            &files,
            &BTreeSet::new(),
            SystemTime::UNIX_EPOCH + NOW
        )
        .is_empty());
        let old = [local(B, KEEP_UNNAMED)];
        let removed = [Step::Remove { sha256: B.into() }];
        assert_eq!(
            plan(
                "n1",
                &state,
                &old,
                &BTreeSet::new(),
                SystemTime::UNIX_EPOCH + NOW
            ),
            removed
        );
        // A deleted image's file (its hash was named before) goes at once.
        let young = [local(B, Duration::from_secs(5))];
        let known = BTreeSet::from([B.to_string()]);
        assert_eq!(
            plan("n1", &state, &young, &known, SystemTime::UNIX_EPOCH + NOW),
            removed
        );
    }

    #[test]
    fn an_image_only_this_node_or_no_member_holds_is_not_fetched() {
        let state = state(&[("deb", A, &["gone"]), ("mine", B, &["n1"])], &[]);
        assert!(plan(
            "n1",
            &state,
            &[],
            &BTreeSet::new(),
            SystemTime::UNIX_EPOCH + NOW
        )
        .is_empty());
    }
}
