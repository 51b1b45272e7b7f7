//! The agent's side of live migrations (DESIGN.md §7): on the destination, prepare the incoming
//! VM and tell the log where it listens; on the source, start the transfer, report progress to
//! the leader, ask for the ownership switch when the destination holds everything, and tell
//! both guests the committed outcome.
//!
//! Every decision is taken from committed state: the source resumes only after a committed
//! `Fail`/`Cancel` or a refused `Switch`; the destination resumes only after the switch
//! committed (told by the source, or by this worker when it sees the commit itself). The
//! worker keeps no state that matters across restarts: it asks the guests where they are.

use paddock_model::vm::DiskPolicy;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paddock_api::pb;
use paddock_migration::Progress;
use paddock_model::migration::{Migration, Phase};
use paddock_model::{ClientRequest, Command, Outcome};
use paddock_raft::SharedState;
use tokio::sync::watch;

use crate::drivers::{Driver, DriverError, MigrateRequest, MigrationRole, MigrationStatus};
use crate::progress_board::{figures, ProgressBoard};
use crate::proposer::Proposer;

/// How often open migrations are looked at; every [`FAST_TICK`] while one of this node's
/// guests is paused for its switch (that latency adds to the downtime).
const TICK: Duration = Duration::from_millis(10);
const FAST_TICK: Duration = Duration::from_millis(1);
/// How often progress goes to the leader.
const REPORT_EVERY: Duration = Duration::from_millis(250);
/// Job records of ended migrations are looked for at least this often.
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// A step proposed without a definite answer is proposed again after this long.
const RETRY_AFTER: Duration = Duration::from_secs(2);

pub struct Worker {
    pub name: String,
    pub driver: Arc<dyn Driver>,
    pub proposer: Arc<Proposer>,
    pub shared: SharedState,
    pub board: Arc<ProgressBoard>,
    /// Where an incoming VM's image names resolve to local copies.
    pub images: crate::images::ImageStore,
    /// The outgoing migrations this node started, kept across restarts.
    pub journal: super::journal::Journal,
}

/// What this worker did for one migration (only to avoid repeating itself too often).
#[derive(Default)]
struct Local {
    incoming_started: bool,
    proposed: HashMap<&'static str, Instant>,
    migrate_sent: bool,
    outcome_sent: Option<bool>,
    reported: Option<Instant>,
    /// The source guest is paused for its stop-and-copy or switch: look again soon.
    paused: bool,
}

impl Local {
    /// True when `step` was not proposed in the last [`RETRY_AFTER`] (and marks it now).
    fn due(&mut self, step: &'static str) -> bool {
        let due = self
            .proposed
            .get(step)
            .is_none_or(|at| at.elapsed() >= RETRY_AFTER);
        if due {
            self.proposed.insert(step, Instant::now());
        }
        due
    }
}

impl Worker {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut local: HashMap<u64, Local> = HashMap::new();
        let mut tick = TICK;
        let mut pruned_at = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.changed() => return,
            }
            tick = TICK;
            let (mine, host): (Vec<Migration>, Option<String>) = {
                let applied = self.shared.read();
                let state = &applied.state;
                let mine = state
                    .migrations
                    .values()
                    .filter(|m| m.ended_ms.is_none())
                    .filter(|m| {
                        m.source == self.name || m.destination.as_deref() == Some(&self.name)
                    })
                    .cloned()
                    .collect();
                let host = state.members.get(&self.name).map(|m| host_of(&m.address));
                (mine, host)
            };
            let before = local.len();
            local.retain(|id, _| mine.iter().any(|m| m.id == *id));
            if local.len() != before || pruned_at.elapsed() >= PRUNE_EVERY {
                self.journal.prune(&self.shared.read().state);
                pruned_at = Instant::now();
            }
            for m in mine {
                let entry = local.entry(m.id).or_default();
                let result = if m.destination.as_deref() == Some(&self.name) {
                    self.destination(&m, entry, host.as_deref()).await
                } else {
                    self.source(&m, entry).await
                };
                if let Err(e) = result {
                    tracing::warn!(migration = m.id, vm = %m.vm, error = %e, "migration step failed; retrying");
                }
                if entry.paused {
                    tick = FAST_TICK;
                }
            }
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn Driver) -> Result<T, DriverError> + Send + 'static,
    ) -> Result<T, DriverError> {
        let driver = self.driver.clone();
        tokio::task::spawn_blocking(move || call(driver.as_ref()))
            .await
            .map_err(|e| DriverError(format!("driver task failed: {e}")))?
    }

    /// Proposes `command`: `Some(outcome)` when the log answered, `None` when unknown.
    async fn propose(&self, command: Command) -> Option<Outcome> {
        match self.proposer.write(ClientRequest::internal(command)).await {
            Ok(outcome) => Some(outcome),
            Err(e) => {
                tracing::warn!(error = %e, "cannot propose a migration step; will retry");
                None
            }
        }
    }

    async fn destination(
        &self,
        m: &Migration,
        local: &mut Local,
        host: Option<&str>,
    ) -> Result<(), DriverError> {
        match m.phase {
            Phase::Preparing => {
                if !local.incoming_started {
                    let spec = {
                        let shared = self.shared.read();
                        let state = &shared.state;
                        match state
                            .vms
                            .get(&m.vm)
                            .map(|vm| self.images.resolve(state, &vm.spec))
                        {
                            Some(Ok(spec)) => Some(spec),
                            Some(Err(waiting)) => {
                                // The image sync fetches it; prepare on a later pass.
                                tracing::info!(migration = m.id, vm = %m.vm, "{waiting}");
                                None
                            }
                            None => None,
                        }
                    };
                    let (Some(spec), Some(host)) = (spec, host) else {
                        return Ok(());
                    };
                    local.incoming_started = true;
                    let (vm, epoch, id, listen) =
                        (m.vm.clone(), m.target_epoch, m.id, host.to_string());
                    let started = self
                        .blocking(move |d| d.prepare_incoming(&vm, epoch, &spec, id, &listen))
                        .await;
                    if let Err(e) = started {
                        if local.due("fail") {
                            self.propose(Command::MigrationFail {
                                id: m.id,
                                reason: format!("{}: cannot prepare the VM: {e}", self.name),
                            })
                            .await;
                        }
                        return Ok(());
                    }
                    tracing::info!(migration = m.id, vm = %m.vm, "preparing an incoming migration");
                }
                let vm = m.vm.clone();
                if let Some(ready) = self.blocking(move |d| d.incoming_ready(&vm)).await? {
                    if local.due("prepared") {
                        let address = ready.address.unwrap_or_else(|| {
                            format!("{}:{}", host.unwrap_or("127.0.0.1"), ready.port)
                        });
                        self.propose(Command::MigrationPrepared {
                            id: m.id,
                            address,
                            prepare_ms: ready.prepare_ms,
                        })
                        .await;
                    }
                }
            }
            _ if m.switched_ms.is_some() && local.outcome_sent != Some(true) => {
                // The commit is in this replica: resume here even if the source never says so.
                let vm = m.vm.clone();
                self.blocking(move |d| d.migration_switch(&vm, true))
                    .await?;
                local.outcome_sent = Some(true);
            }
            _ => {}
        }
        Ok(())
    }

    async fn status(&self, vm: &str) -> Result<MigrationStatus, DriverError> {
        let vm = vm.to_string();
        self.blocking(move |d| d.migration_status(&vm)).await
    }

    async fn source(&self, m: &Migration, local: &mut Local) -> Result<(), DriverError> {
        // Whether the ownership moved decides, not the phase's name: after the switch the
        // source never resumes, whatever happens to the migration.
        let switched = m.switched_ms.is_some();
        match m.phase {
            Phase::Transferring => self.transfer(m, local).await,
            _ if switched => {
                if !local.migrate_sent && self.journal.has(m.id) {
                    // Restarted after the switch (post-copy may still be pulling pages):
                    // take the job over so its end is seen and reported.
                    if let Some(request) = self.request_for(m) {
                        let vm = m.vm.clone();
                        let _ = self
                            .blocking(move |d| d.resume_outgoing(&vm, &request))
                            .await;
                    }
                    local.migrate_sent = true;
                }
                if local.outcome_sent != Some(true) {
                    let vm = m.vm.clone();
                    // The guest may already be gone (pre-copy done): nothing to tell then.
                    if self
                        .blocking(move |d| d.migration_switch(&vm, true))
                        .await
                        .is_ok()
                    {
                        local.outcome_sent = Some(true);
                    }
                }
                let status = self.status(&m.vm).await;
                let done = match &status {
                    Ok(s) => s.progress.as_ref().filter(|p| p.done).cloned(),
                    // The source guest is gone after the switch: nothing more will come.
                    Err(_) => Some(Progress::default()),
                };
                if let Ok(MigrationStatus {
                    progress: Some(p), ..
                }) = &status
                {
                    self.report(m.id, p, local).await;
                }
                if let Some(p) = done {
                    if local.due("finish") {
                        let figures = (p.total_ms > 0).then(|| figures(&p));
                        self.propose(Command::MigrationFinish { id: m.id, figures })
                            .await;
                    }
                }
                Ok(())
            }
            Phase::Failed | Phase::Cancelled => self.roll_back(m, local).await,
            _ => Ok(()),
        }
    }

    async fn transfer(&self, m: &Migration, local: &mut Local) -> Result<(), DriverError> {
        if !local.migrate_sent {
            let Some(request) = self.request_for(m) else {
                return Ok(());
            };
            let vm = m.vm.clone();
            // Started by an earlier paddockd of this node: take it over, never start it again.
            let resume = self.journal.has(m.id);
            if !resume {
                if let Err(e) = self.journal.started(m.id, &m.vm) {
                    return Err(DriverError(format!(
                        "cannot record the migration job in DATA/migrations: {e}"
                    )));
                }
            }
            let started = self
                .blocking(move |d| match resume {
                    true => d.resume_outgoing(&vm, &request),
                    false => d.migrate_out(&vm, &request),
                })
                .await;
            match started {
                Ok(()) => {
                    local.migrate_sent = true;
                    tracing::info!(migration = m.id, vm = %m.vm, "transfer started");
                }
                Err(e) => {
                    if local.due("rolled-back") {
                        self.propose(Command::MigrationRolledBack {
                            id: m.id,
                            reason: Some(format!("{}: cannot start the transfer: {e}", self.name)),
                            figures: None,
                        })
                        .await;
                    }
                    return Ok(());
                }
            }
        }
        let status = match self.status(&m.vm).await {
            Ok(status) => status,
            Err(e) => {
                // The source guest is gone: the VM is not running here any more (the agent
                // reports it); the migration cannot go on.
                if local.due("fail") {
                    self.propose(Command::MigrationFail {
                        id: m.id,
                        reason: format!("the source guest is gone: {e}"),
                    })
                    .await;
                }
                return Ok(());
            }
        };
        let Some(progress) = status.progress.filter(|_| status.migration == Some(m.id)) else {
            // The guest does not know this migration (a restarted guest?): send it again.
            local.migrate_sent = false;
            return Ok(());
        };
        local.paused = progress.counter_at_pause.is_some() && !progress.done;
        self.report(m.id, &progress, local).await;
        if progress.done {
            // The engine rolled back by itself (destination lost, bad digest, no convergence):
            // the guest already runs on here.
            if local.due("rolled-back") {
                self.propose(Command::MigrationRolledBack {
                    id: m.id,
                    reason: progress.error.clone(),
                    figures: Some(figures(&progress)),
                })
                .await;
            }
            return Ok(());
        }
        if progress.ready && local.due("switch") {
            match self.propose(Command::MigrationSwitch { id: m.id }).await {
                Some(Ok(_)) => {
                    let vm = m.vm.clone();
                    self.blocking(move |d| d.migration_switch(&vm, true))
                        .await?;
                    local.outcome_sent = Some(true);
                    tracing::info!(migration = m.id, vm = %m.vm, "ownership switched");
                }
                Some(Err(rejection)) => {
                    // Refused by the log (cancelled, failed, VM moved): it never switches.
                    tracing::warn!(migration = m.id, vm = %m.vm, %rejection, "switch refused; resuming the source");
                    let vm = m.vm.clone();
                    self.blocking(move |d| d.migration_switch(&vm, false))
                        .await?;
                    local.outcome_sent = Some(false);
                }
                // Unknown: the replica will say (switching, or failed/cancelled) next ticks.
                None => {}
            }
        }
        Ok(())
    }

    /// What the driver is asked to do for `m` (`None` until the destination listens).
    fn request_for(&self, m: &Migration) -> Option<MigrateRequest> {
        let to = m.address.clone()?;
        let applied = self.shared.read();
        let settings = &applied.state.settings;
        // A node-wide limit is shared evenly by the node's outgoing migrations.
        let outgoing = applied
            .state
            .migrations
            .values()
            .filter(|o| o.source == self.name && o.phase.active())
            .count()
            .max(1) as u64;
        let node_share = settings.migration_node_bandwidth.map(|b| b / outgoing);
        let bandwidth = match (m.options.bandwidth, node_share) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let request = MigrateRequest {
            migration: m.id,
            to,
            mode: m.options.mode,
            policy: settings.migration_policy,
            max_downtime_ms: m.options.max_downtime_ms,
            bandwidth,
            streams: settings.migration_streams as u16,
            target_epoch: m.target_epoch,
            copy_storage: applied.state.vms.get(&m.vm).is_some_and(|vm| {
                vm.spec.guest.disk_policy == DiskPolicy::Local && !vm.spec.disks.is_empty()
            }),
        };
        Some(request)
    }

    /// Failed or cancelled before the switch: stop the transfer, make sure the guest runs on,
    /// then confirm.
    async fn roll_back(&self, m: &Migration, local: &mut Local) -> Result<(), DriverError> {
        let status = self.status(&m.vm).await;
        let running_on = match &status {
            Ok(s) if s.role == MigrationRole::Source && s.migration == Some(m.id) => {
                let p = s.progress.clone().unwrap_or_default();
                if !p.done && local.outcome_sent != Some(false) {
                    let (vm, reason) = (m.vm.clone(), m.error.clone().unwrap_or_default());
                    // Before its switch request the engine stops on cancel; after it, only the
                    // (now certain) refusal moves it.
                    self.blocking(move |d| {
                        let _ = d.migration_cancel(&vm, &reason);
                        d.migration_switch(&vm, false)
                    })
                    .await?;
                    local.outcome_sent = Some(false);
                }
                p.done.then_some(p)
            }
            // Never started here, or the guest is gone (the agent reports that): nothing to
            // resume.
            _ => Some(Progress::default()),
        };
        if let Some(p) = running_on {
            if local.due("rolled-back") {
                self.propose(Command::MigrationRolledBack {
                    id: m.id,
                    reason: None,
                    figures: (p.total_ms > 0).then(|| figures(&p)),
                })
                .await;
            }
        }
        Ok(())
    }

    /// Sends live progress to the leader (at most every [`REPORT_EVERY`]).
    async fn report(&self, id: u64, progress: &Progress, local: &mut Local) {
        if local
            .reported
            .is_some_and(|at| at.elapsed() < REPORT_EVERY && !progress.done && !progress.ready)
        {
            return;
        }
        local.reported = Some(Instant::now());
        let me = self
            .shared
            .read()
            .state
            .members
            .get(&self.name)
            .map(|m| m.id);
        match self.proposer.leader() {
            Some((leader, _)) if Some(leader) == me => {
                self.board.put(id, progress.clone(), Instant::now())
            }
            Some((_, address)) => {
                let Ok(channel) = self.proposer.channel(&address) else {
                    return;
                };
                let request = pb::MigrationReport {
                    id,
                    progress: Some(progress.into()),
                };
                let mut client = pb::migrations_client::MigrationsClient::new(channel);
                let call = client.report(request);
                if let Err(e) = tokio::time::timeout(Duration::from_secs(1), call).await {
                    tracing::debug!(error = %e, "progress report timed out");
                }
            }
            None => {}
        }
    }
}

/// `host` of a `host:port` address.
fn host_of(address: &str) -> String {
    address
        .rsplit_once(':')
        .map_or(address, |(host, _)| host)
        .to_string()
}
