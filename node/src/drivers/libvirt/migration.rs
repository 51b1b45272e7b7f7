//! Live migration through libvirt (DESIGN.md §7): QEMU moves the memory, peer to peer (the
//! source's libvirtd drives the destination's), and Paddock keeps the decisions — when to go
//! post-copy, when to give up, and above all the ownership switch.
//!
//! How the switch is kept with an API that finishes migrations by itself:
//!
//! ```text
//!   source (this module)                                destination libvirtd
//!   migrate_to_uri3(LIVE|PEER2PEER|...) ──────────────▶ domain defined with
//!      │ monitor thread: job stats every 100 ms            "paddock-epoch:E+1 paddock-incoming:M"
//!      │                                                   (listed as Incoming)
//!      ├─ pre-copy (flag PAUSED): libvirt returns ─▶ ready ─▶ switch committed ─▶ the
//!      │     destination's agent resumes it and clears the mark
//!      └─ post-copy (no PAUSED: libvirt refuses it with POSTCOPY): ready after the first pass
//!            or once rounds stall, the source still running ─▶ switch committed ─▶
//!            StartPostCopy: libvirt pauses the source and runs the destination
//! ```
//!
//! Why two copies never run:
//! - pre-copy: `VIR_MIGRATE_PAUSED` leaves the destination paused when libvirt is done, and
//!   only a committed switch resumes it. The source QEMU is gone by then, so a refused switch
//!   loses the VM's memory (it starts again from its disks; [`LOST`]); QEMU's
//!   `pause-before-switchover` would close that window, libvirt does not expose it.
//! - post-copy: libvirt always runs the destination at the switch, so the switch must come
//!   first: `StartPostCopy` is called only after the commit, and until then QEMU must not
//!   finish pre-copy by itself (which would run the destination at once). The downtime limit
//!   is held at [`HOLD_DOWNTIME_MS`] until the commit, so QEMU completes a pass only when no
//!   page at all is left dirty — nearly never for a running guest. If it happens anyway, the
//!   destination runs under the incoming mark: its agent keeps it only while the migration is
//!   open and its lease valid (reconcile rule 1; the fencing process destroys it with the
//!   lease), the source QEMU is gone, and the source reports the transfer done so the leader
//!   commits the switch as for pre-copy. On shared storage QEMU's image lock is the second
//!   barrier: no second QEMU opens a disk the first still holds.
//! - every migration is bounded: pre-copy rounds ([`MAX_ROUNDS`]) and the node's
//!   `--libvirt-migrate-timeout`; past either the job is aborted and the source runs on.
//!
//! Tested against real QEMU in `tests/tests/libvirt.rs` (two libvirt hosts in network
//! namespaces, a Linux guest verifying its memory across every migration), and the
//! decisions here against a scripted job.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use paddock_migration::Progress;
use paddock_model::migration::{MigrationMode, MAX_PRECOPY_ROUNDS};
use paddock_model::settings::MigrationPolicy;
use virt::domain::{Domain, JobStats, MigrateParameters};
use virt::sys;

use crate::drivers::{DriverError, MigrateRequest};

/// How often the job's statistics are read.
const POLL: Duration = Duration::from_millis(100);
/// How long an aborted migration may wait for libvirt's call before the rollback is taken.
const ABORT_GRACE: Duration = Duration::from_secs(10);
/// The downtime limit of a post-copy migration until its switch is committed: QEMU finishes
/// pre-copy by itself only when the rest fits this, so it practically never does (see the
/// module notes). The requested limit applies from the switch on.
pub const HOLD_DOWNTIME_MS: u64 = 1;
/// Pre-copy gives up after this many rounds (as the memvm engine does).
const MAX_ROUNDS: u64 = MAX_PRECOPY_ROUNDS as u64;
const MIB: u64 = 1 << 20;

/// How libvirt migrations reach their destination.
#[derive(Debug, Clone)]
pub struct MigrationConfig {
    /// The destination's libvirtd as the source's libvirtd reaches it; `{host}` becomes the
    /// destination node's host.
    pub peer_uri: String,
    /// QEMU's own TLS for the memory stream (`VIR_MIGRATE_TLS`, certificates in libvirt's
    /// `migrate_tls_x509_cert_dir`).
    pub tls: bool,
    /// Longest a migration may take before it is aborted (the source runs on).
    pub timeout: Duration,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        MigrationConfig {
            peer_uri: "qemu+tls://{host}/system".into(),
            tls: true,
            timeout: Duration::from_secs(600),
        }
    }
}

impl MigrationConfig {
    pub fn peer_uri_for(&self, host: &str) -> String {
        self.peer_uri.replace("{host}", host)
    }
}

/// When the source is suspended to go post-copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostcopyWhen {
    Never,
    /// Mode `postcopy`: once the first pass is over.
    AfterFirstPass,
    /// Mode `auto` with policy `postcopy`: once rounds stop shrinking.
    Stalled,
}

/// Flags and parameters for `virDomainMigrateToURI3`.
#[derive(Debug, Clone)]
pub struct Plan {
    pub flags: u32,
    pub params: MigrateParameters,
    pub postcopy: PostcopyWhen,
}

/// When `request` goes post-copy (by mode and policy).
pub fn postcopy_when(request: &MigrateRequest) -> PostcopyWhen {
    match (request.mode, request.policy) {
        (MigrationMode::Precopy, _) | (MigrationMode::Auto, MigrationPolicy::Throttle) => {
            PostcopyWhen::Never
        }
        (MigrationMode::Postcopy, _) => PostcopyWhen::AfterFirstPass,
        (MigrationMode::Auto, MigrationPolicy::Postcopy) => PostcopyWhen::Stalled,
    }
}

/// What libvirt is asked to do for `request`; `dest_xml` is the definition the destination
/// gets (see [`super::incoming_xml`]).
pub fn plan(
    request: &MigrateRequest,
    config: &MigrationConfig,
    dest_xml: String,
) -> Result<Plan, DriverError> {
    let mut flags = sys::VIR_MIGRATE_LIVE
        | sys::VIR_MIGRATE_PEER2PEER
        | sys::VIR_MIGRATE_PERSIST_DEST
        | sys::VIR_MIGRATE_ABORT_ON_ERROR;
    let postcopy = postcopy_when(request);
    if (request.mode, request.policy) == (MigrationMode::Auto, MigrationPolicy::Throttle) {
        flags |= sys::VIR_MIGRATE_AUTO_CONVERGE;
    }
    if postcopy == PostcopyWhen::Never {
        // The destination stays paused until the committed switch resumes it.
        flags |= sys::VIR_MIGRATE_PAUSED;
    } else {
        // libvirt refuses PAUSED with POSTCOPY; the switch comes before StartPostCopy instead.
        flags |= sys::VIR_MIGRATE_POSTCOPY;
    }
    if request.copy_storage {
        // Local disks: copy the overlays (the image is on both nodes).
        flags |= sys::VIR_MIGRATE_NON_SHARED_INC;
    }
    if config.tls {
        flags |= sys::VIR_MIGRATE_TLS;
    }
    let mut params = MigrateParameters {
        dest_xml: Some(dest_xml.clone()),
        persist_xml: Some(dest_xml),
        // libvirt counts bandwidth in MiB/s.
        bandwidth: request.bandwidth.map(|b| b.div_ceil(MIB).max(1)),
        ..MigrateParameters::default()
    };
    // QEMU (10.0) refuses post-copy with multifd: "Postcopy is not yet compatible with
    // multifd". Several streams are for pre-copy only.
    if request.streams > 1 && postcopy == PostcopyWhen::Never {
        flags |= sys::VIR_MIGRATE_PARALLEL;
        params.parallel_connections = Some(i32::from(request.streams));
    }
    Ok(Plan {
        flags,
        params,
        postcopy,
    })
}

/// Job statistics as Paddock's progress.
pub fn apply_stats(progress: &mut Progress, stats: &JobStats) {
    let page = stats.mem_page_size.unwrap_or(4096);
    progress.memory_bytes = stats.mem_total.unwrap_or(progress.memory_bytes);
    progress.bytes_sent = stats
        .data_processed
        .or(stats.mem_processed)
        .unwrap_or(progress.bytes_sent);
    progress.memory_sent = stats.mem_processed.unwrap_or(progress.memory_sent)
        + stats.mem_constant.unwrap_or(0) * page;
    progress.remaining_bytes = stats
        .mem_remaining
        .or(stats.data_remaining)
        .unwrap_or(progress.remaining_bytes);
    progress.rate_bps = stats.mem_bps.unwrap_or(progress.rate_bps);
    progress.dirty_rate_bps = stats
        .mem_dirty_rate
        .map_or(progress.dirty_rate_bps, |r| r * page);
    progress.zero_pages = stats.mem_constant.unwrap_or(progress.zero_pages);
    progress.round = stats
        .mem_iteration
        .map_or(progress.round, |i| i.saturating_sub(1) as u32);
    progress.throttle = stats
        .auto_converge_throttle
        .map_or(progress.throttle, |t| t.clamp(0, 100) as u8);
    progress.expected_downtime_ms = stats.downtime.unwrap_or(progress.expected_downtime_ms);
    progress.total_ms = stats.time_elapsed.unwrap_or(progress.total_ms);
}

/// True when rounds stopped shrinking: the last round left at least 90 % of the one before.
fn stalled(remaining_per_round: &[u64]) -> bool {
    match remaining_per_round {
        [.., before, last] if remaining_per_round.len() >= 3 => *last >= before / 10 * 9,
        _ => false,
    }
}

fn last_error(context: &str) -> DriverError {
    DriverError(format!("{context}: {}", virt::error::Error::last_error()))
}

/// What a migration does to its source domain besides the blocking migrate call: the libvirt
/// domain in production, a scripted one in the tests.
pub trait Job: Send + Sync {
    /// Statistics of the job under way (`completed`: of the one that just ended).
    fn stats(&self, completed: bool) -> Result<JobStats, DriverError>;
    fn set_max_downtime(&self, ms: u64) -> Result<(), DriverError>;
    fn abort(&self) -> Result<(), DriverError>;
    fn start_post_copy(&self) -> Result<(), DriverError>;
    /// libvirt moved the domain away (shut off, reason `migrated`).
    fn migrated(&self) -> bool;
    /// The domain is paused (libvirt's stop-and-copy, or a failed switch-over).
    fn paused(&self) -> bool;
}

impl Job for Domain {
    fn stats(&self, completed: bool) -> Result<JobStats, DriverError> {
        let flags = if completed {
            sys::VIR_DOMAIN_JOB_STATS_COMPLETED
        } else {
            0
        };
        job_stats(self, flags)
    }

    fn set_max_downtime(&self, ms: u64) -> Result<(), DriverError> {
        self.migrate_set_max_downtime(ms, 0)
            .map(|_| ())
            .map_err(|e| DriverError(format!("cannot set the maximum downtime: {e}")))
    }

    fn abort(&self) -> Result<(), DriverError> {
        abort_job(self)
    }

    fn start_post_copy(&self) -> Result<(), DriverError> {
        start_post_copy(self)
    }

    fn paused(&self) -> bool {
        use virt::domain::DomainState;
        use virt::enumutil::Enum;
        matches!(self.state(), Ok((Enum::Known(DomainState::Paused), _)))
    }

    fn migrated(&self) -> bool {
        use virt::domain::{DomainShutoffReason, DomainState, DomainStateReason};
        use virt::enumutil::Enum;
        matches!(
            self.state(),
            Ok((
                Enum::Known(DomainState::Shutoff),
                Enum::Known(DomainStateReason::Shutoff(Enum::Known(
                    DomainShutoffReason::Migrated
                )))
            ))
        )
    }
}

/// `virDomainGetJobStats`. `virt` 0.5's `Domain::job_stats` builds a `Vec` from the pointer
/// libvirt returns, which is null when there is no job (undefined behaviour; debug builds
/// abort) and was allocated by libvirt; this copies the parameters and frees them with libvirt.
#[allow(unsafe_code)]
pub fn job_stats(domain: &Domain, flags: u32) -> Result<JobStats, DriverError> {
    let mut kind: std::os::raw::c_int = 0;
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut count: std::os::raw::c_int = 0;
    // SAFETY: the pointers are valid for writes; the domain pointer comes from a live `Domain`.
    let rc = unsafe {
        sys::virDomainGetJobStats(domain.as_ptr(), &mut kind, &mut params, &mut count, flags)
    };
    if rc < 0 {
        return Err(last_error("cannot read the job statistics"));
    }
    let copied = if params.is_null() || count <= 0 {
        Vec::new()
    } else {
        // SAFETY: libvirt returned `count` parameters at `params`.
        unsafe { std::slice::from_raw_parts(params, count as usize) }.to_vec()
    };
    // Strings are copied out here (virt converts them without taking ownership)...
    let stats = JobStats::from((kind, copied));
    if !params.is_null() {
        // SAFETY: ...so libvirt's allocation is freed once, by libvirt.
        unsafe { sys::virTypedParamsFree(params, count) };
    }
    Ok(stats)
}

// `virt` 0.5 wraps neither call; these two FFI calls are unsafe too.
#[allow(unsafe_code)]
fn abort_job(domain: &Domain) -> Result<(), DriverError> {
    // SAFETY: the pointer comes from a live `Domain`, which holds its reference until dropped.
    let rc = unsafe { sys::virDomainAbortJob(domain.as_ptr()) };
    if rc < 0 {
        return Err(last_error("cannot abort the migration job"));
    }
    Ok(())
}

#[allow(unsafe_code)]
fn start_post_copy(domain: &Domain) -> Result<(), DriverError> {
    // SAFETY: as in `abort_job`.
    let rc = unsafe { sys::virDomainMigrateStartPostCopy(domain.as_ptr(), 0) };
    if rc < 0 {
        return Err(last_error("cannot switch the migration to post-copy"));
    }
    Ok(())
}

/// One outgoing migration: the thread blocked in libvirt's call and the monitor beside it.
pub struct Outgoing {
    pub migration: u64,
    domain: Box<dyn Job>,
    postcopy: PostcopyWhen,
    max_downtime_ms: u64,
    started: Instant,
    timeout: Duration,
    /// Taken over from an earlier paddockd (its job record says it started this migration):
    /// no call of ours is blocked in libvirt, so the monitor sees the job end by itself.
    adopted: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    progress: Progress,
    /// Memory left at the start of each round.
    remaining_per_round: Vec<u64>,
    /// Post-copy: ready to switch (the source still runs); from then on only the switch's
    /// outcome moves the migration on.
    postcopy_ready: bool,
    /// StartPostCopy was called: the destination runs, the source is paused for good.
    postcopy_started: Option<Instant>,
    /// libvirt's call returned: `Ok(at)` means the destination holds everything.
    returned: Option<Result<Instant, String>>,
    /// libvirt's own downtime figure for the finished job.
    libvirt_downtime_ms: u64,
    switch: Option<bool>,
    /// When the switch was refused while libvirt's call was still out.
    refused_at: Option<Instant>,
}

impl Outgoing {
    /// Starts migrating `domain` to `peer_uri`; returns at once.
    pub fn start(
        vm: &str,
        migration: u64,
        domain: Domain,
        peer_uri: String,
        plan: Plan,
        max_downtime_ms: u64,
        timeout: Duration,
    ) -> Result<Arc<Outgoing>, DriverError> {
        let hold = if plan.postcopy == PostcopyWhen::Never {
            max_downtime_ms
        } else {
            HOLD_DOWNTIME_MS
        };
        domain.set_max_downtime(hold)?;
        let outgoing = Arc::new(Outgoing::new(
            migration,
            Box::new(domain.clone()),
            plan.postcopy,
            max_downtime_ms,
            timeout,
        ));
        let worker = outgoing.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("migrate-{vm}"))
            .spawn(move || {
                let result = domain
                    .migrate_to_uri3(Some(&peer_uri), plan.params, plan.flags)
                    .map_err(|e| format!("libvirt could not migrate to {peer_uri}: {e}"));
                worker.returned(result);
            });
        spawned.map_err(|e| DriverError(format!("cannot start the migration thread: {e}")))?;
        outgoing.watch(vm)?;
        Ok(outgoing)
    }

    /// Takes over a migration an earlier paddockd of this node started (and that libvirtd
    /// carried on without it, or finished meanwhile): only the monitor runs. Its first look
    /// settles a job that is already over: moved away → ready for the switch (the paused
    /// destination holds everything), still here → rolled back.
    pub fn adopt(
        vm: &str,
        migration: u64,
        domain: Domain,
        postcopy: PostcopyWhen,
        max_downtime_ms: u64,
        timeout: Duration,
    ) -> Result<Arc<Outgoing>, DriverError> {
        let mut outgoing = Outgoing::new(
            migration,
            Box::new(domain),
            postcopy,
            max_downtime_ms,
            timeout,
        );
        outgoing.adopted = true;
        let outgoing = Arc::new(outgoing);
        outgoing.watch(vm)?;
        Ok(outgoing)
    }

    /// The monitor: a thread polling the job every [`POLL`] until libvirt's call has returned.
    fn watch(self: &Arc<Self>, vm: &str) -> Result<(), DriverError> {
        let monitor = self.clone();
        std::thread::Builder::new()
            .name(format!("migrate-watch-{vm}"))
            .spawn(move || {
                while monitor.poll(Instant::now()) {
                    std::thread::sleep(POLL);
                }
            })
            .map(|_| ())
            .map_err(|e| DriverError(format!("cannot start the migration monitor: {e}")))
    }

    fn new(
        migration: u64,
        domain: Box<dyn Job>,
        postcopy: PostcopyWhen,
        max_downtime_ms: u64,
        timeout: Duration,
    ) -> Outgoing {
        Outgoing {
            migration,
            domain,
            postcopy,
            max_downtime_ms,
            started: Instant::now(),
            timeout,
            adopted: false,
            state: Mutex::new(State {
                progress: Progress {
                    phase: "precopy".into(),
                    ..Progress::default()
                },
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not stop the migration's bookkeeping.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn progress(&self) -> Progress {
        self.lock().progress.clone()
    }

    /// Reads the job's statistics and takes the decisions libvirt leaves to us; false once
    /// libvirt's call returned.
    fn poll(&self, now: Instant) -> bool {
        let stats = self.domain.stats(false);
        let mut state = self.lock();
        if state.returned.is_some() {
            return false;
        }
        if state.switch == Some(false) && !state.progress.done {
            // Aborted, but libvirt's call may hang for minutes on a destination that vanished
            // (a cut link: no reset, keepalives must time out). The source never stopped
            // running, so once it is not paused the rollback is confirmed without waiting; a
            // later return is only recorded (the copy is gone, see `returned`).
            let since = *state.refused_at.get_or_insert(now);
            if now.saturating_duration_since(since) >= ABORT_GRACE && !self.domain.paused() {
                let late = format!(
                    "libvirt had not returned from the migration {} s after the abort (the destination is unreachable); the VM runs on at the source",
                    ABORT_GRACE.as_secs()
                );
                state.progress.error = Some(match state.progress.error.take() {
                    Some(why) => format!("{why}; {late}"),
                    None => late,
                });
                state.progress.done = true;
                state.progress.phase = "rolled-back".into();
            }
            return true;
        }
        if state.switch.is_none()
            && state.progress.error.is_none()
            && now.saturating_duration_since(self.started) > self.timeout
        {
            state.progress.error = Some(format!(
                "the migration did not finish within {} s (--libvirt-migrate-timeout); aborted, the VM runs on at the source",
                self.timeout.as_secs()
            ));
            if let Err(e) = self.domain.abort() {
                tracing::warn!(error = %e, "cannot abort a migration past its time limit");
            }
            return true;
        }
        let ended = stats.as_ref().map_or(self.adopted, |s| {
            s.r#type == sys::VIR_DOMAIN_JOB_NONE as i32
        });
        if ended && self.adopted {
            // Nobody's call returns for an adopted job: its end is seen here.
            drop(state);
            let result = if self.domain.migrated() {
                Ok(())
            } else {
                Err(ADOPTED_FAILED.to_string())
            };
            self.returned(result);
            return false;
        }
        let Ok(stats) = stats else {
            return true;
        };
        if stats.r#type == sys::VIR_DOMAIN_JOB_NONE as i32 {
            return true;
        }
        apply_stats(&mut state.progress, &stats);
        let round = stats.mem_iteration.unwrap_or(0);
        if round as usize > state.remaining_per_round.len() {
            let remaining = state.progress.remaining_bytes;
            state.remaining_per_round.push(remaining);
        }
        if state.postcopy_ready || state.switch.is_some() {
            return true;
        }
        let go_postcopy = match self.postcopy {
            PostcopyWhen::Never => false,
            PostcopyWhen::AfterFirstPass => round >= 2,
            PostcopyWhen::Stalled => stalled(&state.remaining_per_round) || round >= MAX_ROUNDS,
        };
        if go_postcopy {
            // The source keeps running until the switch is committed; then StartPostCopy.
            state.postcopy_ready = true;
            state.progress.phase = "switching".into();
            state.progress.ready = true;
        } else if self.postcopy == PostcopyWhen::Never
            && round > MAX_ROUNDS
            && stats.auto_converge_throttle.is_none()
        {
            state.progress.error =
                Some(format!("pre-copy did not converge in {MAX_ROUNDS} rounds"));
            if let Err(e) = self.domain.abort() {
                tracing::warn!(error = %e, "cannot abort a migration that does not converge");
            }
        }
        true
    }

    /// libvirt's call came back.
    fn returned(&self, result: Result<(), String>) {
        let completed = self.domain.stats(true).ok();
        let mut state = self.lock();
        if let Some(stats) = completed.filter(|_| result.is_ok()) {
            apply_stats(&mut state.progress, &stats);
            state.libvirt_downtime_ms = stats.downtime.unwrap_or(0);
        }
        match result {
            Ok(()) => {
                state.returned = Some(Ok(Instant::now()));
                state.progress.remaining_bytes = 0;
                match (state.switch, state.postcopy_started) {
                    // Post-copy after the commit: every page is across.
                    (Some(true), Some(_)) => {
                        state.progress.phase = "completed".into();
                        state.progress.downtime_ms = Some(state.libvirt_downtime_ms);
                        state.progress.done = true;
                    }
                    // Refused while libvirt was finishing: the source is gone.
                    (Some(false), _) => {
                        state.progress.error = Some(LOST.into());
                        state.progress.done = true;
                    }
                    // Finished by itself before the switch (pre-copy; or a post-copy whose
                    // pass left nothing dirty): the switch decides.
                    _ => {
                        state.progress.phase = "transferred".into();
                        state.progress.ready = true;
                    }
                }
            }
            Err(e) => {
                let e = state.progress.error.clone().unwrap_or(e);
                state.returned = Some(Err(e.clone()));
                state.progress.error = Some(e);
                state.progress.ready = false;
                state.progress.done = true;
                state.progress.phase = if state.postcopy_started.is_some() {
                    // Failed in post-copy: neither side holds the whole VM; HA starts it again.
                    "abandoned".into()
                } else {
                    "rolled-back".into()
                };
            }
        }
    }

    /// The committed outcome of the ownership switch.
    pub fn switch(&self, committed: bool) -> Result<(), DriverError> {
        let mut state = self.lock();
        if state.switch.is_some() {
            return Ok(());
        }
        if committed {
            match &state.returned {
                Some(Ok(at)) => {
                    // The destination waited (paused) for this commit: it is downtime too.
                    state.progress.downtime_ms =
                        Some(state.libvirt_downtime_ms + at.elapsed().as_millis() as u64);
                    state.progress.phase = "completed".into();
                    state.progress.done = true;
                }
                None if state.postcopy_ready => {
                    // The requested limit applies to the switch-over itself.
                    if let Err(e) = self.domain.set_max_downtime(self.max_downtime_ms) {
                        tracing::warn!(error = %e, "post-copy switch-over with the holding downtime limit");
                    }
                    self.domain.start_post_copy()?;
                    state.postcopy_started = Some(Instant::now());
                    state.progress.postcopy = true;
                    state.progress.phase = "postcopy".into();
                }
                Some(Err(e)) => {
                    // Committed, but libvirt gave up before: the source runs on (it was never
                    // paused); the leader's timeout fails a switch nobody can complete.
                    state.progress.error = Some(format!("the migration failed at its switch: {e}"));
                    state.progress.done = true;
                }
                None => {
                    return Err(DriverError(
                        "the migration is not ready for its switch".into(),
                    ))
                }
            }
        } else {
            match &state.returned {
                Some(Ok(_)) => state.progress.error = Some(LOST.into()),
                Some(Err(_)) => {}
                None => {
                    // Ignored when the job has just ended: `returned` says how.
                    let _ = self.domain.abort();
                }
            }
            if state.returned.is_some() {
                state.progress.done = true;
                state.progress.phase = "rolled-back".into();
            }
        }
        state.switch = Some(committed);
        Ok(())
    }

    pub fn cancel(&self, reason: &str) -> Result<(), DriverError> {
        let mut state = self.lock();
        if state.returned.is_some() || state.switch.is_some() {
            return Ok(());
        }
        state.progress.error = Some(format!("cancelled: {reason}"));
        self.domain.abort()
    }

    /// The call has returned and the outcome is settled: nothing more will happen.
    pub fn settled(&self) -> bool {
        let state = self.lock();
        state.returned.is_some() && state.progress.done
    }
}

const ADOPTED_FAILED: &str = "the migration ended while paddockd restarted, without moving \
the VM: the VM runs on at the source";

const LOST: &str = "libvirt finished the migration before its switch was refused: the source \
QEMU is gone and the paused destination copy is discarded, so the VM starts again from its disks \
(its memory is lost)";

#[cfg(test)]
mod tests {
    use paddock_model::migration::DEFAULT_MAX_DOWNTIME_MS;

    use super::*;

    fn request(mode: &str, policy: &str) -> MigrateRequest {
        MigrateRequest {
            migration: 7,
            to: "qemu+tls://h2/system".into(),
            mode: MigrationMode::parse(mode).expect("a mode"),
            policy: MigrationPolicy::parse(policy).expect("a policy"),
            max_downtime_ms: DEFAULT_MAX_DOWNTIME_MS,
            bandwidth: Some(500 * MIB + 1),
            streams: 4,
            target_epoch: 3,
            copy_storage: false,
        }
    }

    #[test]
    fn plans_follow_mode_policy_and_limits() {
        let config = MigrationConfig::default();
        let p = plan(&request("precopy", "postcopy"), &config, "<domain/>".into()).expect("plan");
        assert_eq!(p.postcopy, PostcopyWhen::Never);
        assert_eq!(p.flags & sys::VIR_MIGRATE_POSTCOPY, 0);
        assert_eq!(p.flags & sys::VIR_MIGRATE_NON_SHARED_INC, 0);
        for flag in [
            sys::VIR_MIGRATE_LIVE,
            sys::VIR_MIGRATE_PEER2PEER,
            sys::VIR_MIGRATE_PAUSED,
            sys::VIR_MIGRATE_TLS,
            sys::VIR_MIGRATE_PARALLEL,
        ] {
            assert_ne!(p.flags & flag, 0, "flag {flag:#x} missing");
        }
        assert_eq!(p.params.bandwidth, Some(501), "MiB/s, rounded up");
        assert_eq!(p.params.parallel_connections, Some(4));
        assert_eq!(p.params.dest_xml.as_deref(), Some("<domain/>"));

        let p = plan(&request("postcopy", "throttle"), &config, String::new()).expect("plan");
        assert_eq!(p.postcopy, PostcopyWhen::AfterFirstPass);
        assert_ne!(p.flags & sys::VIR_MIGRATE_POSTCOPY, 0);
        // QEMU refuses post-copy with multifd.
        assert_eq!(p.flags & sys::VIR_MIGRATE_PARALLEL, 0);
        assert_eq!(p.params.parallel_connections, None);
        // libvirt refuses POSTCOPY with PAUSED ("not supported with non-live or paused
        // migration"): a post-copy plan never has both.
        assert_eq!(p.flags & sys::VIR_MIGRATE_PAUSED, 0);

        let mut local = request("precopy", "throttle");
        local.copy_storage = true;
        let p = plan(&local, &config, String::new()).expect("plan");
        assert_ne!(p.flags & sys::VIR_MIGRATE_NON_SHARED_INC, 0);

        let p = plan(&request("auto", "postcopy"), &config, String::new()).expect("plan");
        assert_eq!(p.postcopy, PostcopyWhen::Stalled);
        assert_eq!(p.flags & sys::VIR_MIGRATE_PAUSED, 0);

        let p = plan(&request("auto", "throttle"), &config, String::new()).expect("plan");
        assert_eq!(p.postcopy, PostcopyWhen::Never);
        assert_ne!(p.flags & sys::VIR_MIGRATE_AUTO_CONVERGE, 0);
        assert_eq!(p.flags & sys::VIR_MIGRATE_POSTCOPY, 0);

        let mut one = request("auto", "postcopy");
        one.streams = 1;
        one.bandwidth = None;
        let plain = MigrationConfig {
            tls: false,
            ..config.clone()
        };
        let p = plan(&one, &plain, String::new()).expect("plan");
        assert_eq!(
            p.flags & (sys::VIR_MIGRATE_PARALLEL | sys::VIR_MIGRATE_TLS),
            0
        );
        assert_eq!(p.params.bandwidth, None);
    }

    #[test]
    fn job_statistics_become_progress() {
        let stats = JobStats {
            mem_total: Some(1 << 30),
            data_processed: Some(300 * MIB),
            mem_processed: Some(280 * MIB),
            mem_constant: Some(1000),
            mem_remaining: Some(200 * MIB),
            mem_bps: Some(900 * MIB),
            mem_dirty_rate: Some(2560),
            mem_page_size: Some(4096),
            mem_iteration: Some(3),
            auto_converge_throttle: Some(40),
            downtime: Some(35),
            time_elapsed: Some(812),
            ..JobStats::default()
        };
        let mut progress = Progress::default();
        apply_stats(&mut progress, &stats);
        assert_eq!(progress.memory_bytes, 1 << 30);
        assert_eq!(progress.bytes_sent, 300 * MIB);
        assert_eq!(progress.memory_sent, 280 * MIB + 1000 * 4096);
        assert_eq!(progress.remaining_bytes, 200 * MIB);
        assert_eq!(progress.dirty_rate_bps, 10 * MIB);
        assert_eq!((progress.round, progress.throttle), (2, 40));
        assert_eq!(
            (progress.expected_downtime_ms, progress.total_ms),
            (35, 812)
        );
        // Fields a later reading lacks keep their last value.
        apply_stats(&mut progress, &JobStats::default());
        assert_eq!(progress.remaining_bytes, 200 * MIB);
    }

    #[test]
    fn rounds_stall_when_they_stop_shrinking() {
        assert!(!stalled(&[100, 50]));
        assert!(!stalled(&[100, 50, 20]));
        assert!(stalled(&[100, 50, 46]));
        assert!(stalled(&[100, 50, 80]));
    }

    /// A domain whose job statistics the test sets, recording what the migration does to it.
    #[derive(Default)]
    struct Script {
        now: Mutex<JobStats>,
        completed: Mutex<Option<JobStats>>,
        calls: Mutex<Vec<&'static str>>,
        migrated: Mutex<bool>,
    }

    struct Scripted(Arc<Script>);

    impl Job for Scripted {
        fn stats(&self, completed: bool) -> Result<JobStats, DriverError> {
            if completed {
                let done = self.0.completed.lock().expect("lock").clone();
                done.ok_or_else(|| DriverError("no completed job".into()))
            } else {
                Ok(self.0.now.lock().expect("lock").clone())
            }
        }
        fn set_max_downtime(&self, _ms: u64) -> Result<(), DriverError> {
            self.0.calls.lock().expect("lock").push("downtime");
            Ok(())
        }
        fn abort(&self) -> Result<(), DriverError> {
            self.0.calls.lock().expect("lock").push("abort");
            Ok(())
        }
        fn start_post_copy(&self) -> Result<(), DriverError> {
            self.0.calls.lock().expect("lock").push("start-post-copy");
            Ok(())
        }
        fn migrated(&self) -> bool {
            *self.0.migrated.lock().expect("lock")
        }
        fn paused(&self) -> bool {
            false
        }
    }

    fn scripted(when: PostcopyWhen) -> (Outgoing, Arc<Script>) {
        let script = Arc::new(Script::default());
        let outgoing = Outgoing::new(
            9,
            Box::new(Scripted(script.clone())),
            when,
            300,
            Duration::from_secs(600),
        );
        (outgoing, script)
    }

    /// One monitor tick with libvirt reporting round `round` with `remaining` bytes left.
    fn tick(outgoing: &Outgoing, script: &Script, round: u64, remaining: u64) -> bool {
        *script.now.lock().expect("lock") = JobStats {
            r#type: sys::VIR_DOMAIN_JOB_UNBOUNDED as i32,
            mem_total: Some(1 << 30),
            mem_iteration: Some(round),
            mem_remaining: Some(remaining),
            ..JobStats::default()
        };
        outgoing.poll(Instant::now())
    }

    fn calls(script: &Script) -> Vec<&'static str> {
        script.calls.lock().expect("lock").clone()
    }

    fn adopted(script: &Arc<Script>) -> Outgoing {
        let mut outgoing = Outgoing::new(
            9,
            Box::new(Scripted(script.clone())),
            PostcopyWhen::Never,
            300,
            Duration::from_secs(600),
        );
        outgoing.adopted = true;
        outgoing
    }

    #[test]
    fn an_adopted_job_that_moved_the_vm_waits_for_the_switch() {
        let script = Arc::new(Script::default());
        let outgoing = adopted(&script);
        // Still under way in libvirtd: watched like our own.
        assert!(tick(&outgoing, &script, 3, 1 << 20));
        assert!(!outgoing.progress().ready);
        // It ends with the domain moved away: the paused destination holds everything.
        *script.now.lock().expect("lock") = JobStats::default();
        *script.migrated.lock().expect("lock") = true;
        assert!(!outgoing.poll(Instant::now()), "the monitor stops");
        let p = outgoing.progress();
        assert!(p.ready && !p.done && p.error.is_none(), "{p:?}");
        outgoing.switch(true).expect("switch");
        assert!(outgoing.progress().done && outgoing.settled());
    }

    #[test]
    fn an_adopted_job_that_ended_without_moving_the_vm_rolls_back() {
        let script = Arc::new(Script::default());
        let outgoing = adopted(&script);
        *script.now.lock().expect("lock") = JobStats::default();
        assert!(!outgoing.poll(Instant::now()));
        let p = outgoing.progress();
        assert!(p.done && !p.ready, "{p:?}");
        assert_eq!(p.phase, "rolled-back");
        assert!(p
            .error
            .as_deref()
            .is_some_and(|e| e.contains("runs on at the source")));
    }

    #[test]
    fn precopy_waits_for_the_switch_after_libvirt_finished() {
        let (o, script) = scripted(PostcopyWhen::Never);
        assert!(tick(&o, &script, 1, 900 * MIB));
        assert!(tick(&o, &script, 2, 100 * MIB));
        assert!(!o.progress().ready);
        *script.completed.lock().expect("lock") = Some(JobStats {
            downtime: Some(40),
            time_elapsed: Some(1500),
            ..JobStats::default()
        });
        o.returned(Ok(()));
        let p = o.progress();
        assert!(p.ready && !p.done, "{p:?}");
        assert!(
            !tick(&o, &script, 3, 0),
            "the monitor stops once libvirt returned"
        );
        o.switch(true).expect("switch");
        let p = o.progress();
        assert!(p.done && p.error.is_none(), "{p:?}");
        assert_eq!((p.phase.as_str(), p.total_ms), ("completed", 1500));
        assert!(p.downtime_ms.is_some_and(|d| d >= 40));
        assert!(calls(&script).is_empty(), "{:?}", calls(&script));
        assert!(o.settled());
    }

    #[test]
    fn a_switch_refused_after_libvirt_finished_says_the_memory_is_lost() {
        let (o, _script) = scripted(PostcopyWhen::Never);
        o.returned(Ok(()));
        o.switch(false).expect("refused");
        let p = o.progress();
        assert!(p.done, "{p:?}");
        assert!(p
            .error
            .as_deref()
            .is_some_and(|e| e.contains("memory is lost")));
    }

    #[test]
    fn postcopy_is_ready_after_the_first_pass_and_starts_only_when_committed() {
        let (o, script) = scripted(PostcopyWhen::AfterFirstPass);
        assert!(tick(&o, &script, 1, 900 * MIB));
        assert!(!o.progress().ready);
        assert!(tick(&o, &script, 2, 300 * MIB));
        // Ready, and the source is left running (pausing it would let QEMU finish pre-copy
        // and run the destination before the commit).
        assert!(o.progress().ready);
        assert!(calls(&script).is_empty(), "{:?}", calls(&script));
        // More ticks while waiting for the log change nothing.
        assert!(tick(&o, &script, 3, 300 * MIB));
        assert!(calls(&script).is_empty());
        o.switch(true).expect("switch");
        assert_eq!(calls(&script), ["downtime", "start-post-copy"]);
        let p = o.progress();
        assert!(p.postcopy && !p.done, "{p:?}");
        *script.completed.lock().expect("lock") = Some(JobStats {
            downtime: Some(12),
            ..JobStats::default()
        });
        o.returned(Ok(()));
        let p = o.progress();
        assert_eq!(p.downtime_ms, Some(12), "{p:?}");
        assert!(
            p.done && p.error.is_none() && p.phase == "completed",
            "{p:?}"
        );
    }

    #[test]
    fn auto_goes_postcopy_when_rounds_stall_and_a_refusal_aborts_with_the_source_running() {
        let (o, script) = scripted(PostcopyWhen::Stalled);
        tick(&o, &script, 1, 1000 * MIB);
        tick(&o, &script, 2, 500 * MIB);
        tick(&o, &script, 3, 300 * MIB);
        assert!(!o.progress().ready, "still shrinking");
        tick(&o, &script, 4, 290 * MIB);
        assert!(o.progress().ready);
        o.switch(false).expect("refused");
        assert_eq!(calls(&script), ["abort"]);
        assert!(!o.progress().done, "done once libvirt's call returned");
        o.returned(Err("aborted".into()));
        let p = o.progress();
        assert!(p.done && p.phase == "rolled-back", "{p:?}");
    }

    #[test]
    fn postcopy_that_finished_by_itself_waits_for_the_switch_like_precopy() {
        let (o, script) = scripted(PostcopyWhen::AfterFirstPass);
        tick(&o, &script, 1, 900 * MIB);
        o.returned(Ok(()));
        let p = o.progress();
        assert!(p.ready && !p.done && p.phase == "transferred", "{p:?}");
        o.switch(true).expect("committed");
        assert!(o.progress().done && o.progress().error.is_none());
        assert!(calls(&script).is_empty(), "no post-copy to start");
    }

    #[test]
    fn a_failure_in_postcopy_is_abandoned_and_before_it_rolled_back() {
        let (o, script) = scripted(PostcopyWhen::AfterFirstPass);
        tick(&o, &script, 2, 300 * MIB);
        o.returned(Err("link cut".into()));
        let p = o.progress();
        // Never paused: the source runs on.
        assert!(!p.ready && p.done && p.phase == "rolled-back", "{p:?}");

        let (o, script) = scripted(PostcopyWhen::AfterFirstPass);
        tick(&o, &script, 2, 300 * MIB);
        o.switch(true).expect("committed");
        o.returned(Err("link cut".into()));
        let p = o.progress();
        assert!(
            p.done && p.error.is_some() && p.phase == "abandoned",
            "{p:?}"
        );
    }

    #[test]
    fn a_migration_past_its_time_limit_is_aborted() {
        let script = Arc::new(Script::default());
        let o = Outgoing::new(
            9,
            Box::new(Scripted(script.clone())),
            PostcopyWhen::Never,
            300,
            Duration::from_secs(5),
        );
        assert!(o.poll(Instant::now()));
        assert!(calls(&script).is_empty());
        assert!(o.poll(Instant::now() + Duration::from_secs(6)));
        assert_eq!(calls(&script), ["abort"]);
        o.returned(Err("operation aborted".into()));
        let p = o.progress();
        assert!(
            p.done
                && p.error
                    .as_deref()
                    .is_some_and(|e| e.contains("did not finish within 5 s")),
            "{p:?}"
        );
    }

    #[test]
    fn failures_and_cancels_before_the_switch_roll_back() {
        let (o, script) = scripted(PostcopyWhen::Never);
        tick(&o, &script, 1, 900 * MIB);
        o.returned(Err("destination unreachable".into()));
        let p = o.progress();
        assert!(p.done && !p.ready && p.phase == "rolled-back", "{p:?}");
        assert_eq!(p.error.as_deref(), Some("destination unreachable"));

        let (o, script) = scripted(PostcopyWhen::Never);
        tick(&o, &script, 1, 900 * MIB);
        o.cancel("operator").expect("cancel");
        assert_eq!(calls(&script), ["abort"]);
        o.returned(Err("operation aborted".into()));
        let p = o.progress();
        assert!(p.done, "{p:?}");
        assert_eq!(p.error.as_deref(), Some("cancelled: operator"));
        // A cancel after the end does nothing.
        o.cancel("again").expect("cancel");
        assert_eq!(calls(&script), ["abort"]);
    }

    #[test]
    fn an_abort_libvirt_never_returns_from_is_rolled_back_after_a_grace() {
        let (o, script) = scripted(PostcopyWhen::Never);
        tick(&o, &script, 1, 900 * MIB);
        o.switch(false).expect("refused");
        assert_eq!(calls(&script), ["abort"]);
        let refused = Instant::now();
        assert!(o.poll(refused));
        assert!(!o.progress().done, "not before the grace");
        assert!(o.poll(refused + ABORT_GRACE));
        let p = o.progress();
        assert!(p.done && p.phase == "rolled-back", "{p:?}");
        assert!(p
            .error
            .as_deref()
            .is_some_and(|e| e.contains("runs on at the source")));
        // Still out in libvirt: not settled, so no new migration starts over it.
        assert!(!o.settled());
        o.returned(Err("unable to connect".into()));
        assert!(o.settled());
    }

    #[test]
    fn precopy_that_never_converges_is_aborted() {
        let (o, script) = scripted(PostcopyWhen::Never);
        for round in 1..=MAX_ROUNDS {
            tick(&o, &script, round, 500 * MIB);
        }
        assert!(calls(&script).is_empty());
        tick(&o, &script, MAX_ROUNDS + 1, 500 * MIB);
        assert_eq!(calls(&script), ["abort"]);
        o.returned(Err("aborted".into()));
        let p = o.progress();
        assert!(p.done && p.error.as_deref().is_some_and(|e| e.contains("converge")));
    }

    #[test]
    fn peer_uri_names_the_destination_host() {
        let config = MigrationConfig::default();
        assert_eq!(
            config.peer_uri_for("10.0.0.2"),
            "qemu+tls://10.0.0.2/system"
        );
    }
}
