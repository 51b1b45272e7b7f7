//! The agent (DESIGN.md §1): on every node, makes the local driver match the assignments in
//! this node's replica and reports what it observes back as batched `VmObserved` commands.
//!
//! Each pass: list the driver's instances → destroy what is not assigned here or belongs to an
//! older epoch → start what is assigned and desired running → stop what is desired stopped →
//! report observed states that differ from the replica's. Passes run on every applied change
//! and at least every [`PASS_EVERY`], so they are idempotent and restart-safe: a restarted
//! paddockd finds its guests through the driver and adopts them.
//!
//! Nothing runs without a lease ([`crate::liveness`]): the agent heartbeats the leader, starts
//! VMs only while its lease is valid and its replica has applied the log index the lease came
//! with, and destroys every VM shortly before its lease ends (fencing).

pub mod migration;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paddock_model::vm::Desired;
use paddock_model::{ClientRequest, Command, Node, Resources, VmReport, VmSpec, VmState};
use paddock_raft::{Raft, SharedState};
use tokio::sync::watch;

use crate::drivers::{Driver, Instance, InstanceState};
use crate::liveness::{self, Heard, Lease};
use crate::proposer::Proposer;
use crate::service::RaftService;

/// Longest time between two passes when nothing changes.
pub const PASS_EVERY: Duration = Duration::from_secs(1);
/// Shortest time between two passes (bounds the work under a burst of changes).
const MIN_GAP: Duration = Duration::from_millis(100);
/// A report not yet reflected in the replica is sent again after this long.
const RESEND_AFTER: Duration = Duration::from_secs(3);

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
}

/// Where the agent stands with its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Valid lease and the replica has applied what it came with: VMs may run and start.
    Leased,
    /// Valid lease, but the replica lags: keep what runs, start nothing.
    CatchingUp,
    /// No valid lease: nothing may run.
    Fenced,
}

/// One VM assigned to this node, as the replica says.
struct Assigned {
    epoch: u64,
    desired: Desired,
    spec: VmSpec,
    observed: VmState,
    reason: Option<String>,
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
        let mut sent: HashMap<String, (u64, VmState, Instant)> = HashMap::new();
        let mut registered = None;
        let mut first_pass = true;
        loop {
            let current = lease.lock().ok().and_then(|l| *l);
            let busy = match self
                .pass(current, &mut sent, &mut registered, &mut first_pass)
                .await
            {
                Ok(busy) => busy,
                Err(e) => {
                    tracing::warn!(error = %e, "agent pass failed; retrying");
                    false
                }
            };
            // Passes at most every MIN_GAP; sooner than PASS_EVERY when the replica changes or
            // a VM is between states (so "stopped" shows soon after it happens).
            tokio::time::sleep(MIN_GAP).await;
            if busy {
                continue;
            }
            tokio::select! {
                _ = applied.changed() => {}
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
            .write(ClientRequest { id: None, command })
            .await?
            .map_err(|rejection| anyhow::anyhow!("{rejection}"))?;
        Ok(())
    }

    /// One reconciliation pass; returns whether some VM is between states.
    async fn pass(
        &self,
        lease: Option<Lease>,
        sent: &mut HashMap<String, (u64, VmState, Instant)>,
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
        // Deleted VMs this node ran: confirmed gone once the loop below has destroyed them.
        let deleted_here: Vec<String> = self
            .shared
            .read()
            .state
            .deleting
            .iter()
            .filter(|(_, (node, _))| *node == self.name)
            .map(|(name, _)| name.clone())
            .collect();
        let assigned: BTreeMap<String, Assigned> = {
            let applied = self.shared.read();
            applied
                .state
                .vms
                .values()
                .filter_map(|vm| {
                    let a = vm.assignment.as_ref().filter(|a| a.node == self.name)?;
                    Some((
                        vm.name.clone(),
                        Assigned {
                            epoch: a.epoch,
                            desired: vm.desired,
                            spec: vm.spec.clone(),
                            observed: vm.observed,
                            reason: vm.reason.clone(),
                        },
                    ))
                })
                .collect()
        };
        // Live migrations touching this node: an incoming VM is kept although not assigned
        // here yet; a source VM is left to the migration worker (never started or stopped
        // here) until its migration has settled.
        let (incoming, outgoing): (BTreeMap<String, u64>, BTreeMap<String, u64>) = {
            let applied = self.shared.read();
            let open = applied
                .state
                .migrations
                .values()
                .filter(|m| m.ended_ms.is_none());
            let (mut incoming, mut outgoing) = (BTreeMap::new(), BTreeMap::new());
            for m in open {
                if m.destination.as_deref() == Some(self.name.as_str()) && m.phase.active() {
                    incoming.insert(m.vm.clone(), m.target_epoch);
                }
                if m.source == self.name {
                    outgoing.insert(m.vm.clone(), m.source_epoch);
                }
            }
            (incoming, outgoing)
        };
        let driver = self.driver.clone();
        let instances = tokio::task::spawn_blocking(move || driver.list()).await??;
        let mut by_vm: BTreeMap<String, Instance> = BTreeMap::new();
        // Whatever happens below, the next pass is no longer the first.
        let first = std::mem::replace(first_pass, false);
        let first_pass = &first;
        for instance in instances {
            let current = assigned
                .get(&instance.vm)
                .is_some_and(|a| a.epoch == instance.epoch);
            let arriving = incoming.get(&instance.vm) == Some(&instance.epoch);
            // A migrated-away source stays until its migration is settled: its figures (and
            // its memory check) are read from it first.
            let leaving = outgoing.get(&instance.vm) == Some(&instance.epoch);
            if !current && (arriving || leaving) {
                // Owned by a migration under way (the worker drives it).
                continue;
            }
            if current && instance.state == InstanceState::Migrated {
                if leaving {
                    // Migrated away; this replica has not applied the switch yet. Never
                    // restart it.
                    continue;
                }
                // The hypervisor finished a migration whose switch never committed (libvirt
                // completes by itself; see drivers/libvirt/migration.rs): a dead shell. The
                // destination drops its paused copy; the VM starts again here.
                tracing::warn!(vm = %instance.vm, epoch = instance.epoch, "migrated away without a switch; starting it again from its disks");
                self.blocking(move |d| d.destroy(&instance.vm)).await?;
                continue;
            }
            if current && *first_pass && matches!(instance.state, InstanceState::Crashed(_)) {
                // Dead when this daemon started: the host (or the daemon with its VMs) went
                // down. Like VMs after a host reboot, it is started again, same epoch.
                tracing::info!(vm = %instance.vm, epoch = instance.epoch, "found dead after this node restarted; starting it again");
                self.blocking(move |d| d.destroy(&instance.vm)).await?;
            } else if current {
                by_vm.insert(instance.vm.clone(), instance);
            } else {
                // Not ours (any more), or an older epoch: it must not run here.
                tracing::info!(vm = %instance.vm, epoch = instance.epoch, "destroying a VM not assigned here");
                self.blocking(move |d| d.destroy(&instance.vm)).await?;
            }
        }
        if !deleted_here.is_empty() {
            self.propose(Command::VmGone {
                node: self.name.clone(),
                vms: deleted_here,
            })
            .await?;
        }
        let mut reports = Vec::new();
        for (vm, a) in &assigned {
            let state = by_vm.get(vm).map(|i| &i.state);
            if outgoing.get(vm) == Some(&a.epoch)
                && matches!(state, None | Some(InstanceState::Stopped))
            {
                // A migration owns it: starting it here could run it twice.
                continue;
            }
            let observed = match (a.desired, state) {
                (Desired::Running, None | Some(InstanceState::Stopped))
                    if standing == Standing::CatchingUp =>
                {
                    // Not before this replica has seen everything the lease came with.
                    continue;
                }
                (Desired::Running, None | Some(InstanceState::Stopped)) => {
                    tracing::info!(%vm, epoch = a.epoch, "starting");
                    let (name, epoch, spec) = (vm.clone(), a.epoch, a.spec.clone());
                    match self.blocking(move |d| d.start(&name, epoch, &spec)).await {
                        Ok(()) => (VmState::Starting, None),
                        Err(e) => (VmState::Failed, Some(format!("cannot start: {e}"))),
                    }
                }
                (Desired::Stopped, Some(InstanceState::Running | InstanceState::Starting)) => {
                    tracing::info!(%vm, "stopping");
                    let name = vm.clone();
                    self.blocking(move |d| d.stop(&name)).await?;
                    (VmState::Stopping, None)
                }
                (Desired::Stopped, Some(InstanceState::Crashed(_))) => {
                    // An operator stop clears a failure; the next start starts afresh.
                    let name = vm.clone();
                    self.blocking(move |d| d.destroy(&name)).await?;
                    (VmState::Stopped, None)
                }
                (Desired::Stopped, None) => (VmState::Stopped, None),
                (_, Some(InstanceState::Migrated)) => continue,
                (_, Some(InstanceState::Incoming)) => {
                    // Assigned here at the epoch it was prepared for: the switch committed.
                    // Tell it (again: the source or the worker may have already), so it never
                    // waits on a source that is gone.
                    let name = vm.clone();
                    if let Err(e) = self
                        .blocking(move |d| d.migration_switch(&name, true))
                        .await
                    {
                        tracing::warn!(%vm, error = %e, "cannot tell an incoming VM it owns the VM now");
                    }
                    (VmState::Starting, None)
                }
                (_, Some(state)) => match state {
                    InstanceState::Starting | InstanceState::Incoming => (VmState::Starting, None),
                    InstanceState::Migrated => continue,
                    InstanceState::Running => (VmState::Running, None),
                    InstanceState::Stopping => (VmState::Stopping, None),
                    InstanceState::Stopped => (VmState::Stopped, None),
                    InstanceState::Crashed(reason) => (VmState::Failed, Some(reason.clone())),
                },
            };
            if (observed.0, &observed.1) == (a.observed, &a.reason) {
                sent.remove(vm);
                continue;
            }
            let recently = sent.get(vm).is_some_and(|(epoch, state, at)| {
                *epoch == a.epoch && *state == observed.0 && at.elapsed() < RESEND_AFTER
            });
            if !recently {
                sent.insert(vm.clone(), (a.epoch, observed.0, Instant::now()));
                reports.push(VmReport {
                    vm: vm.clone(),
                    epoch: a.epoch,
                    state: observed.0,
                    reason: observed.1,
                });
            }
        }
        sent.retain(|vm, _| assigned.contains_key(vm));
        let busy = reports
            .iter()
            .any(|r| matches!(r.state, VmState::Starting | VmState::Stopping))
            || by_vm
                .values()
                .any(|i| matches!(i.state, InstanceState::Starting | InstanceState::Stopping));
        if !reports.is_empty() {
            self.propose(Command::VmObserved {
                node: self.name.clone(),
                reports,
            })
            .await?;
        }
        Ok(busy)
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
