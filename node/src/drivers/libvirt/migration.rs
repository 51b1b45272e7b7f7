//! Live migration through libvirt (DESIGN.md §7): QEMU moves the memory, peer to peer (the
//! source's libvirtd drives the destination's), and Paddock keeps the decisions — when to go
//! post-copy, when to give up, and above all the ownership switch.
//!
//! How the switch is kept with an API that finishes migrations by itself:
//!
//! ```text
//!   source (this module)                               destination libvirtd
//!   migrate_to_uri3(LIVE|PEER2PEER|PAUSED|...) ──────▶ domain defined with
//!      │ monitor thread: job stats every 100 ms           "paddock-epoch:E+1 paddock-incoming:M"
//!      │                                                  (listed as Incoming, never run)
//!      ├─ pre-copy: libvirt returns ─▶ ready ──▶ switch committed ──▶ destination resumed
//!      │                                          by its own agent, mark cleared
//!      └─ post-copy: suspend the source ─▶ ready ──▶ switch committed ──▶ StartPostCopy
//! ```
//!
//! `VIR_MIGRATE_PAUSED` keeps the destination paused when libvirt is done, so nothing runs
//! before the commit. It also makes post-copy here a bounded stop-and-copy: a destination
//! libvirt started paused cannot be resumed while its incoming job runs, so it resumes once
//! every page is across (the paused source dirties nothing, so this always completes; the
//! downtime is the remaining set over the link).
//!
//! The price, compared with the memvm engine: once libvirt has finished a pre-copy migration
//! the source QEMU is gone, so if the switch is then refused (migration cancelled or timed out
//! in that window, VM moved by HA) the source cannot resume. The VM is then started again from
//! its disks and its memory is lost. QEMU's `pause-before-switchover` would close that window;
//! libvirt does not expose it.
//!
//! Not exercised against QEMU on the machines this was written on (no KVM/QEMU there): the
//! tests run the destination's side, the failure path and the flag planning against libvirt's
//! `test:///default` driver; see docs/operations.md, "Live migration with libvirt".

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
}

impl Default for MigrationConfig {
    fn default() -> Self {
        MigrationConfig {
            peer_uri: "qemu+tls://{host}/system".into(),
            tls: true,
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
        | sys::VIR_MIGRATE_PAUSED
        | sys::VIR_MIGRATE_ABORT_ON_ERROR;
    let postcopy = match (request.mode, request.policy) {
        (MigrationMode::Precopy, _) => PostcopyWhen::Never,
        (MigrationMode::Postcopy, _) => PostcopyWhen::AfterFirstPass,
        (MigrationMode::Auto, MigrationPolicy::Postcopy) => PostcopyWhen::Stalled,
        (MigrationMode::Auto, MigrationPolicy::Throttle) => {
            flags |= sys::VIR_MIGRATE_AUTO_CONVERGE;
            PostcopyWhen::Never
        }
    };
    if postcopy != PostcopyWhen::Never {
        flags |= sys::VIR_MIGRATE_POSTCOPY;
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
    if request.streams > 1 {
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
    fn suspend(&self) -> Result<(), DriverError>;
    fn resume(&self) -> Result<(), DriverError>;
    fn abort(&self) -> Result<(), DriverError>;
    fn start_post_copy(&self) -> Result<(), DriverError>;
}

impl Job for Domain {
    fn stats(&self, completed: bool) -> Result<JobStats, DriverError> {
        let flags = if completed {
            sys::VIR_DOMAIN_JOB_STATS_COMPLETED
        } else {
            0
        };
        self.job_stats(flags)
            .map_err(|e| DriverError(format!("cannot read the job statistics: {e}")))
    }

    fn suspend(&self) -> Result<(), DriverError> {
        Domain::suspend(self).map_err(|e| DriverError(format!("cannot pause the source: {e}")))
    }

    fn resume(&self) -> Result<(), DriverError> {
        Domain::resume(self).map_err(|e| DriverError(format!("cannot resume the source: {e}")))
    }

    fn abort(&self) -> Result<(), DriverError> {
        abort_job(self)
    }

    fn start_post_copy(&self) -> Result<(), DriverError> {
        start_post_copy(self)
    }
}

// `virt` 0.5 wraps neither call; these two FFI calls are the only unsafe code here.
#[allow(unsafe_code)]
fn abort_job(domain: &Domain) -> Result<(), DriverError> {
    // SAFETY: the pointer comes from a live `Domain`, which holds its reference until dropped.
    let rc = unsafe { sys::virDomainAbortJob(domain.as_ptr()) };
    if rc < 0 {
        return Err(last_error("cannot abort the migration job"));
    }
    Ok(())
}

// `virt` 0.5 wraps neither call; these two FFI calls are the only unsafe code here.
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
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    progress: Progress,
    /// Memory left at the start of each round.
    remaining_per_round: Vec<u64>,
    /// When the source was suspended for the post-copy switch; from then on only the
    /// switch's outcome moves it.
    paused_for_switch: Option<Instant>,
    /// libvirt's call returned: `Ok(at)` means the destination holds everything (paused).
    returned: Option<Result<Instant, String>>,
    /// libvirt's own downtime figure for the finished job.
    libvirt_downtime_ms: u64,
    switch: Option<bool>,
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
    ) -> Result<Arc<Outgoing>, DriverError> {
        domain
            .migrate_set_max_downtime(max_downtime_ms, 0)
            .map_err(|e| DriverError(format!("cannot set the maximum downtime: {e}")))?;
        let outgoing = Arc::new(Outgoing::new(
            migration,
            Box::new(domain.clone()),
            plan.postcopy,
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
        let monitor = outgoing.clone();
        std::thread::Builder::new()
            .name(format!("migrate-watch-{vm}"))
            .spawn(move || {
                while monitor.poll() {
                    std::thread::sleep(POLL);
                }
            })
            .map_err(|e| DriverError(format!("cannot start the migration monitor: {e}")))?;
        Ok(outgoing)
    }

    fn new(migration: u64, domain: Box<dyn Job>, postcopy: PostcopyWhen) -> Outgoing {
        Outgoing {
            migration,
            domain,
            postcopy,
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
    fn poll(&self) -> bool {
        let stats = self.domain.stats(false);
        let mut state = self.lock();
        if state.returned.is_some() {
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
        if state.paused_for_switch.is_some() || state.switch.is_some() {
            return true;
        }
        let go_postcopy = match self.postcopy {
            PostcopyWhen::Never => false,
            PostcopyWhen::AfterFirstPass => round >= 2,
            PostcopyWhen::Stalled => stalled(&state.remaining_per_round) || round >= MAX_ROUNDS,
        };
        if go_postcopy {
            match self.domain.suspend() {
                Ok(()) => {
                    state.paused_for_switch = Some(Instant::now());
                    state.progress.phase = "switching".into();
                    state.progress.ready = true;
                }
                Err(e) => tracing::warn!(error = %e, "cannot pause the source for post-copy"),
            }
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
                match state.switch {
                    // Post-copy after the commit: now every page is across, and the
                    // destination (started paused) can be resumed: the downtime ends about now.
                    Some(true) => {
                        state.progress.phase = "completed".into();
                        state.progress.downtime_ms = state
                            .paused_for_switch
                            .map(|at| at.elapsed().as_millis() as u64);
                    }
                    // Refused while libvirt was finishing: the source is gone.
                    Some(false) => state.progress.error = Some(LOST.into()),
                    None => {
                        state.progress.phase = "transferred".into();
                        state.progress.ready = true;
                    }
                }
                state.progress.done = state.switch.is_some();
            }
            Err(e) => {
                let e = state.progress.error.clone().unwrap_or(e);
                state.returned = Some(Err(e.clone()));
                state.progress.error = Some(e);
                match (state.paused_for_switch, state.switch) {
                    // Paused for a switch that may already be committed: only its outcome
                    // may resume the source (a refused one does; the leader's timeout fails
                    // a migration nobody decides).
                    (Some(_), None) => state.progress.ready = false,
                    _ => {
                        state.progress.phase = if state.switch == Some(true) {
                            "abandoned".into()
                        } else {
                            "rolled-back".into()
                        };
                        state.progress.done = true;
                    }
                }
            }
        }
    }

    /// The committed outcome of the ownership switch.
    pub fn switch(&self, committed: bool) -> Result<(), DriverError> {
        let mut state = self.lock();
        if state.switch.is_some() {
            return Ok(());
        }
        let paused = state.paused_for_switch;
        if committed {
            match (&state.returned, paused) {
                (Some(Ok(at)), _) => {
                    state.progress.downtime_ms =
                        Some(state.libvirt_downtime_ms + at.elapsed().as_millis() as u64);
                    state.progress.phase = "completed".into();
                    state.progress.done = true;
                }
                (None, Some(_)) => {
                    self.domain.start_post_copy()?;
                    state.progress.postcopy = true;
                    state.progress.phase = "postcopy".into();
                }
                (Some(Err(e)), Some(_)) => {
                    // Committed, but libvirt gave up meanwhile: the destination has nothing
                    // runnable and the source stays paused. HA starts the VM again.
                    state.progress.error = Some(format!("the migration failed at its switch: {e}"));
                    state.progress.done = true;
                }
                _ => {
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
            if paused.is_some() {
                self.domain.resume()?;
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
        }
    }

    #[test]
    fn plans_follow_mode_policy_and_limits() {
        let config = MigrationConfig::default();
        let p = plan(&request("precopy", "postcopy"), &config, "<domain/>".into()).expect("plan");
        assert_eq!(p.postcopy, PostcopyWhen::Never);
        assert_eq!(p.flags & sys::VIR_MIGRATE_POSTCOPY, 0);
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

        let p = plan(&request("auto", "postcopy"), &config, String::new()).expect("plan");
        assert_eq!(p.postcopy, PostcopyWhen::Stalled);

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
        fn suspend(&self) -> Result<(), DriverError> {
            self.0.calls.lock().expect("lock").push("suspend");
            Ok(())
        }
        fn resume(&self) -> Result<(), DriverError> {
            self.0.calls.lock().expect("lock").push("resume");
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
    }

    fn scripted(when: PostcopyWhen) -> (Outgoing, Arc<Script>) {
        let script = Arc::new(Script::default());
        let outgoing = Outgoing::new(9, Box::new(Scripted(script.clone())), when);
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
        outgoing.poll()
    }

    fn calls(script: &Script) -> Vec<&'static str> {
        script.calls.lock().expect("lock").clone()
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
    fn postcopy_pauses_after_the_first_pass_and_starts_only_when_committed() {
        let (o, script) = scripted(PostcopyWhen::AfterFirstPass);
        assert!(tick(&o, &script, 1, 900 * MIB));
        assert!(calls(&script).is_empty());
        assert!(tick(&o, &script, 2, 300 * MIB));
        assert_eq!(calls(&script), ["suspend"]);
        assert!(o.progress().ready);
        // More ticks while waiting for the log change nothing.
        assert!(tick(&o, &script, 3, 300 * MIB));
        assert_eq!(calls(&script), ["suspend"]);
        o.switch(true).expect("switch");
        assert_eq!(calls(&script), ["suspend", "start-post-copy"]);
        let p = o.progress();
        assert!(p.postcopy && !p.done, "{p:?}");
        o.returned(Ok(()));
        let p = o.progress();
        assert!(p.downtime_ms.is_some(), "{p:?}");
        assert!(
            p.done && p.error.is_none() && p.phase == "completed",
            "{p:?}"
        );
    }

    #[test]
    fn auto_goes_postcopy_when_rounds_stall_and_a_refusal_resumes_the_source() {
        let (o, script) = scripted(PostcopyWhen::Stalled);
        tick(&o, &script, 1, 1000 * MIB);
        tick(&o, &script, 2, 500 * MIB);
        tick(&o, &script, 3, 300 * MIB);
        assert!(calls(&script).is_empty(), "still shrinking");
        tick(&o, &script, 4, 290 * MIB);
        assert_eq!(calls(&script), ["suspend"]);
        o.switch(false).expect("refused");
        assert_eq!(calls(&script), ["suspend", "abort", "resume"]);
        assert!(!o.progress().done, "done once libvirt's call returned");
        o.returned(Err("aborted".into()));
        let p = o.progress();
        assert!(p.done && p.phase == "rolled-back", "{p:?}");
    }

    #[test]
    fn a_failure_while_paused_for_the_switch_waits_for_the_log() {
        let (o, script) = scripted(PostcopyWhen::AfterFirstPass);
        tick(&o, &script, 2, 300 * MIB);
        o.returned(Err("link cut".into()));
        let p = o.progress();
        // The switch may already be committed: neither resume nor claim to be done.
        assert!(!p.ready && !p.done, "{p:?}");
        assert_eq!(calls(&script), ["suspend"]);
        o.switch(false).expect("refused");
        assert_eq!(calls(&script), ["suspend", "resume"]);
        assert!(o.progress().done);

        // Committed instead: the source stays paused, the VM goes to HA.
        let (o, script) = scripted(PostcopyWhen::AfterFirstPass);
        tick(&o, &script, 2, 300 * MIB);
        o.returned(Err("link cut".into()));
        o.switch(true).expect("committed");
        let p = o.progress();
        assert!(p.done && p.error.is_some(), "{p:?}");
        assert_eq!(calls(&script), ["suspend"]);
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
