//! The agent (DESIGN.md §1): on every node, makes the local driver match the assignments in
//! this node's replica and reports what it observes back as batched `VmObserved` commands.
//!
//! Each pass: list the driver's instances → [`reconcile::reconcile`] decides (pure) → destroy
//! what is not assigned here or belongs to an older epoch → start what is assigned and desired
//! running → stop what is desired stopped → report observed states that differ from the
//! replica's. Passes run on every applied change
//! and at least every [`PASS_EVERY`], so they are idempotent and restart-safe: a restarted
//! paddockd finds its guests through the driver and adopts them.
//!
//! Nothing runs without a lease ([`crate::liveness`]): the agent heartbeats the leader, starts
//! VMs only while its lease is valid and its replica has applied the log index the lease came
//! with, and destroys every VM shortly before its lease ends (fencing).

pub mod journal;
pub mod migration;
pub mod reconcile;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paddock_model::{ClientRequest, Command, Node, Resources, VmState};
use paddock_raft::{Raft, SharedState};
use tokio::sync::watch;

use crate::drivers::{Driver, InstanceState};
use crate::liveness::{self, Heard, Lease};
use crate::proposer::Proposer;
use crate::service::RaftService;
use reconcile::{reconcile, Action, Cleanup, Replica, Reported, Standing, RESEND_AFTER};

/// Longest time between two passes when nothing changes.
pub const PASS_EVERY: Duration = Duration::from_secs(1);
/// Longest wait between two tries of a start that keeps failing.
const START_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How often the addresses of a running VM are looked up.
const ADDRESSES_EVERY: Duration = Duration::from_secs(5);
/// Shortest time between the starts of two passes (bounds the work under a burst of changes;
/// also the most a new assignment waits for the pass that starts it).
const MIN_GAP: Duration = Duration::from_millis(50);

pub struct Agent {
    pub name: String,
    pub driver: Arc<dyn Driver>,
    pub proposer: Arc<Proposer>,
    pub shared: SharedState,
    pub raft: Raft,
    pub capacity: Resources,
    pub labels: BTreeMap<String, String>,
    /// Where the lease deadline is kept for the guests and the next paddockd.
    pub lease_file: std::path::PathBuf,
    /// The leader-side record of heartbeats (used when this node leads and heartbeats itself).
    pub heard: Arc<Heard>,
    pub quorum_fresh_ms: u64,
    /// `--fencing watchdog`: the device fed only while the lease is valid.
    pub watchdog: Option<std::path::PathBuf>,
    /// Where a disk's image name resolves to a verified local copy.
    pub images: crate::images::ImageStore,
    /// When each running VM's addresses were last looked up.
    pub addresses_seen: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
    /// Starts that failed: VM → (epoch, failures in a row, next try).
    pub start_failures: std::sync::Mutex<std::collections::HashMap<String, (u64, u32, Instant)>>,
}

impl Agent {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        // A lease the previous paddockd of this boot held is still ours until it ends.
        let boot = liveness::boot_id();
        let inherited = liveness::read_lease(&self.lease_file, &boot).and_then(|until_ns| {
            let left = until_ns.checked_sub(liveness::monotonic_ns())?;
            Some(Lease {
                until: Instant::now() + Duration::from_nanos(left),
                until_ns,
                log_index: 0,
            })
        });
        let lease = Arc::new(std::sync::Mutex::new(inherited));
        tokio::spawn(hold_lease(
            self.raft.clone(),
            self.shared.clone(),
            self.proposer.clone(),
            self.heard.clone(),
            self.quorum_fresh_ms,
            self.name.clone(),
            lease.clone(),
            self.lease_file.clone(),
            shutdown.clone(),
        ));
        if let Some(device) = self.watchdog.clone() {
            let (lease, shutdown) = (lease.clone(), shutdown.clone());
            tokio::spawn(async move {
                if let Err(e) = crate::watchdog::feed(device, lease, shutdown).await {
                    // Not feeding it means the host will be reset: say why, loudly.
                    tracing::error!(error = %e, "watchdog feeding stopped");
                }
            });
        }
        let mut applied = self.raft.metrics();
        let mut reported = Reported::default();
        let mut registered = None;
        let mut first_pass = true;
        // Drivers with events (libvirt) wake the pass when a VM changes by itself.
        let changes = self
            .driver
            .changes()
            .unwrap_or_else(|| std::sync::Arc::new(tokio::sync::Notify::new()));
        loop {
            let current = lease.lock().ok().and_then(|l| *l);
            let pass_started = Instant::now();
            let busy = match self
                .pass(current, &mut reported, &mut registered, &mut first_pass)
                .await
            {
                Ok(busy) => busy,
                Err(e) => {
                    tracing::warn!(error = %e, "agent pass failed; retrying");
                    false
                }
            };
            // Passes start at most every MIN_GAP; sooner than PASS_EVERY when the replica
            // changes or a VM is between states (so "stopped" shows soon after it happens).
            tokio::time::sleep(MIN_GAP.saturating_sub(pass_started.elapsed())).await;
            if busy {
                continue;
            }
            tokio::select! {
                _ = applied.changed() => {}
                _ = changes.notified() => {}
                _ = tokio::time::sleep(PASS_EVERY) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    /// Registers (or updates) this node in the inventory when the replica disagrees. The
    /// write is acknowledged once applied on the leader; this node's replica may lag, so a
    /// registration is not repeated for [`RESEND_AFTER`].
    async fn register(&self, registered: &mut Option<Instant>) -> anyhow::Result<()> {
        let current: Option<Node> = self.shared.read().state.nodes.get(&self.name).cloned();
        let up_to_date = current.is_some_and(|n| {
            n.capacity == self.capacity
                && n.labels == self.labels
                && n.driver == self.driver.name()
                && n.health == paddock_model::Health::Ready
        });
        if up_to_date || registered.is_some_and(|at| at.elapsed() < RESEND_AFTER) {
            return Ok(());
        }
        let command = Command::NodeRegister {
            name: self.name.clone(),
            capacity: self.capacity,
            labels: self.labels.clone(),
            driver: self.driver.name().to_string(),
        };
        self.propose(command).await?;
        tracing::info!(
            cpus = self.capacity.cpus,
            memory_mib = self.capacity.memory_mib,
            "node registered"
        );
        Ok(())
    }

    async fn propose(&self, command: Command) -> anyhow::Result<()> {
        self.proposer
            .write(ClientRequest::internal(command))
            .await?
            .map_err(|rejection| anyhow::anyhow!("{rejection}"))?;
        Ok(())
    }

    /// One reconciliation pass ([`reconcile::reconcile`] decides, this executes); returns
    /// whether some VM is between states.
    async fn pass(
        &self,
        lease: Option<Lease>,
        reported: &mut Reported,
        registered: &mut Option<Instant>,
        first_pass: &mut bool,
    ) -> anyhow::Result<bool> {
        let applied = self.shared.read().last_applied.map_or(0, |id| id.index);
        let standing = match lease {
            Some(l) if l.valid(Instant::now()) && applied >= l.log_index => Standing::Leased,
            Some(l) if l.valid(Instant::now()) => Standing::CatchingUp,
            _ => Standing::Fenced,
        };
        if standing == Standing::Fenced {
            self.fence().await?;
            return Ok(false);
        }
        if self.proposer.leader().is_none() {
            return Ok(false);
        }
        self.register(registered).await?;
        let replica = Replica::of(&self.shared.read().state, &self.name);
        self.start_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|vm, _| replica.assigned.contains_key(vm));
        let instances = self.blocking(|d| d.list()).await?;
        // Whatever happens below, the next pass is no longer the first.
        let first = std::mem::replace(first_pass, false);
        let plan = reconcile(&replica, instances, standing, first);
        for (instance, why) in plan.cleanup {
            match why {
                Cleanup::DeadShell => {
                    tracing::warn!(vm = %instance.vm, epoch = instance.epoch, "migrated away without a switch; starting it again from its disks")
                }
                Cleanup::DeadAfterRestart => {
                    tracing::info!(vm = %instance.vm, epoch = instance.epoch, "found dead after this node restarted; starting it again")
                }
                Cleanup::NotAssigned => {
                    tracing::info!(vm = %instance.vm, epoch = instance.epoch, "destroying a VM not assigned here")
                }
            }
            self.blocking(move |d| d.destroy(&instance.vm)).await?;
        }
        if !plan.gone.is_empty() {
            for vm in plan.gone.clone() {
                if let Err(e) = self.blocking(move |d| d.forget(&vm)).await {
                    tracing::warn!(error = %e, "cannot remove what a deleted VM left on this node");
                }
            }
            self.propose(Command::VmGone {
                node: self.name.clone(),
                vms: plan.gone,
            })
            .await?;
        }
        let mut observations = Vec::with_capacity(plan.steps.len());
        for step in plan.steps {
            let (mut observed, mut reason) = (step.observed, step.reason);
            let name = step.vm.clone();
            match step.action {
                Action::Observe => {}
                Action::Start(spec) => {
                    let resolved = {
                        let shared = self.shared.read();
                        self.images.resolve(&shared.state, &spec)
                    };
                    let spec = match resolved {
                        Ok(spec) => spec,
                        Err(waiting) => {
                            // The image sync fetches it; its arrival wakes the next pass.
                            observations.push((step.vm, step.epoch, observed, Some(waiting)));
                            continue;
                        }
                    };
                    if !self.start_due(&step.vm, step.epoch) {
                        // Failed lately at this epoch: already reported, retried later.
                        continue;
                    }
                    tracing::info!(vm = %step.vm, epoch = step.epoch, "starting");
                    let epoch = step.epoch;
                    let vm = name.clone();
                    let started = self
                        .blocking(move |d| {
                            d.start(&vm, epoch, &spec)?;
                            // A driver whose start returns with the VM running (libvirt) is
                            // reported running now, not one pass later.
                            d.state(&vm)
                        })
                        .await;
                    match started {
                        Ok(state) => {
                            self.start_failed(&step.vm, step.epoch, None);
                            if state == Some(InstanceState::Running) {
                                observed = VmState::Running;
                            }
                        }
                        Err(e) => {
                            let why = format!("cannot start: {e}");
                            self.start_failed(&step.vm, step.epoch, Some(&why));
                            (observed, reason) = (VmState::Failed, Some(why));
                        }
                    }
                }
                Action::Stop => {
                    tracing::info!(vm = %step.vm, "stopping");
                    self.blocking(move |d| d.stop(&name)).await?;
                }
                Action::DestroyCrashed => self.blocking(move |d| d.destroy(&name)).await?,
                Action::Switch => {
                    if let Err(e) = self
                        .blocking(move |d| d.migration_switch(&name, true))
                        .await
                    {
                        tracing::warn!(vm = %step.vm, error = %e, "cannot tell an incoming VM it owns the VM now");
                    }
                }
            }
            observations.push((step.vm, step.epoch, observed, reason));
        }
        let reports = reported.due(&replica, observations, Instant::now());
        let busy = plan.transient
            || reports
                .iter()
                .any(|r| matches!(r.state, VmState::Starting | VmState::Stopping));
        if !reports.is_empty() {
            self.propose(Command::VmObserved {
                node: self.name.clone(),
                reports,
            })
            .await?;
        }
        self.report_addresses().await?;
        Ok(busy)
    }

    /// Whether a start of `vm` at `epoch` may be tried now (not within the back-off of its
    /// last failure at that epoch).
    fn start_due(&self, vm: &str, epoch: u64) -> bool {
        let failures = self
            .start_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        failures
            .get(vm)
            .is_none_or(|(e, _, next)| *e != epoch || Instant::now() >= *next)
    }

    /// Records a start's outcome: a failure doubles the wait before the next try (1 s up
    /// to [`START_BACKOFF_MAX`]), a success forgets the failures.
    fn start_failed(&self, vm: &str, epoch: u64, error: Option<&str>) {
        let mut failures = self
            .start_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(error) = error else {
            failures.remove(vm);
            return;
        };
        let count = match failures.get(vm) {
            Some((e, count, _)) if *e == epoch => count + 1,
            _ => 1,
        };
        let wait = Duration::from_secs(1u64 << (count - 1).min(6)).min(START_BACKOFF_MAX);
        tracing::warn!(vm, epoch, attempt = count, retry_in = ?wait, error, "start failed");
        failures.insert(vm.to_string(), (epoch, count, Instant::now() + wait));
    }

    /// Looks up the addresses of the VMs running here (each at most every
    /// [`ADDRESSES_EVERY`]) and reports those that changed, in one command.
    async fn report_addresses(&self) -> anyhow::Result<()> {
        let running: Vec<(String, u64, Vec<String>)> = {
            let shared = self.shared.read();
            shared
                .state
                .vms
                .values()
                .filter(|vm| vm.observed == VmState::Running)
                .filter_map(|vm| {
                    let a = vm.assignment.as_ref().filter(|a| a.node == self.name)?;
                    Some((vm.name.clone(), a.epoch, vm.current_addresses().to_vec()))
                })
                .collect()
        };
        let due: Vec<(String, u64, Vec<String>)> = {
            let mut seen = self
                .addresses_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let names: std::collections::HashSet<&str> =
                running.iter().map(|(vm, _, _)| vm.as_str()).collect();
            seen.retain(|vm, _| names.contains(vm.as_str()));
            let now = Instant::now();
            running
                .into_iter()
                .filter(|(vm, _, _)| {
                    let due = seen.get(vm).is_none_or(|at| now - *at >= ADDRESSES_EVERY);
                    if due {
                        seen.insert(vm.clone(), now);
                    }
                    due
                })
                .collect()
        };
        if due.is_empty() {
            return Ok(());
        }
        let changed = self
            .blocking(move |d| {
                let mut changed = Vec::new();
                for (vm, epoch, known) in due {
                    match d.addresses(&vm) {
                        Ok(Some(ips)) if ips != known => changed.push((vm, epoch, ips)),
                        // memvm: no network; libvirt: nothing new, or the domain went away.
                        _ => {}
                    }
                }
                Ok(changed)
            })
            .await?;
        if !changed.is_empty() {
            self.propose(Command::VmAddresses {
                node: self.name.clone(),
                reports: changed,
            })
            .await?;
        }
        Ok(())
    }

    /// No valid lease: destroy whatever still runs here (memvm guests have already halted
    /// themselves at the deadline; libvirt domains have not).
    async fn fence(&self) -> anyhow::Result<()> {
        let driver = self.driver.clone();
        let instances = tokio::task::spawn_blocking(move || driver.list()).await??;
        for instance in instances {
            if matches!(
                instance.state,
                InstanceState::Running | InstanceState::Starting | InstanceState::Stopping
            ) {
                tracing::warn!(vm = %instance.vm, epoch = instance.epoch, "no valid lease: fencing");
                self.blocking(move |d| d.destroy(&instance.vm)).await?;
            }
        }
        Ok(())
    }

    /// Runs a driver call off the async runtime (libvirt calls block).
    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn Driver) -> Result<T, crate::drivers::DriverError> + Send + 'static,
    ) -> anyhow::Result<T> {
        let driver = self.driver.clone();
        Ok(tokio::task::spawn_blocking(move || call(driver.as_ref())).await??)
    }
}

/// Heartbeats the leader every `heartbeat_ms` (default [`liveness::HEARTBEAT_EVERY`]) and keeps the newest lease (also in the
/// lease file, for the memvm guests and a restarted paddockd).
#[allow(clippy::too_many_arguments)]
async fn hold_lease(
    raft: Raft,
    shared: SharedState,
    proposer: Arc<Proposer>,
    heard: Arc<Heard>,
    quorum_fresh_ms: u64,
    name: String,
    lease: Arc<std::sync::Mutex<Option<Lease>>>,
    lease_file: std::path::PathBuf,
    mut shutdown: watch::Receiver<bool>,
) {
    use paddock_api::pb;
    loop {
        let every = Duration::from_millis(shared.read().state.settings.heartbeat_ms)
            .max(Duration::from_millis(100));
        let sent = Instant::now();
        let sent_ns = liveness::monotonic_ns();
        let answer = match proposer.leader() {
            Some((leader, _)) if leader == raft.metrics().borrow().id => {
                RaftService::grant(&raft, &shared, &heard, quorum_fresh_ms, &name).ok()
            }
            Some((_, address)) => match proposer.channel(&address) {
                Ok(channel) => {
                    let mut request = tonic::Request::new(pb::HeartbeatRequest {});
                    request.set_timeout(every);
                    pb::raft_client::RaftClient::new(channel)
                        .heartbeat(request)
                        .await
                        .ok()
                        .map(tonic::Response::into_inner)
                }
                Err(_) => None,
            },
            None => None,
        };
        if let Some(answer) = answer {
            let granted = Duration::from_millis(answer.lease_ms);
            let next = Lease {
                until: sent + granted,
                until_ns: sent_ns + granted.as_nanos() as u64,
                log_index: answer.log_index,
            };
            let newer = lease
                .lock()
                .map(|mut held| {
                    let newer = held.is_none_or(|h| next.until > h.until);
                    if newer {
                        *held = Some(next);
                    }
                    newer
                })
                .unwrap_or(false);
            if newer {
                if let Err(e) = liveness::store_lease(&lease_file, next.until_ns) {
                    tracing::warn!(error = %e, "cannot store the lease; guests will halt at the old deadline");
                }
            }
        }
        let wait = every.saturating_sub(sent.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}
