//! The source side of a migration as an explicit state machine: [`Source::step`] takes one
//! event and returns the actions to carry out. No I/O here — [`crate::run`] does it — so every
//! path is tested with scripted event sequences.
//!
//! ```text
//!  Handshake ─Connected─▶ Precopy ─RoundDone (fits max_downtime)──▶ StopAndCopy ─RoundDone─▶ AwaitVerdict
//!                          │  ▲ RoundDone (more rounds; throttle)                               │
//!                          │  └─────────┘                                                        │
//!                          └─RoundDone (postcopy: mode, or auto and rounds stopped shrinking)──▶┤
//!  AwaitVerdict ─Verdict ok─▶ AwaitSwitch ─Switch committed─▶ Completed (pre-copy)
//!                                         └─Switch committed─▶ Postcopy ─PushDone─▶ Completed
//!  any phase before AwaitSwitch ─Cancel/Failed/Verdict bad/Switch refused─▶ RolledBack
//!  AwaitSwitch ─Failed─▶ stays: only the committed outcome decides (never resume blindly)
//!  Postcopy ─Failed─▶ Abandoned (the destination owns the VM; HA recovers it)
//! ```

use std::time::Duration;

use paddock_model::migration::{MigrationMode, DEFAULT_MAX_DOWNTIME_MS, MAX_PRECOPY_ROUNDS};
use paddock_model::settings::MigrationPolicy;

use crate::PAGE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub mode: MigrationMode,
    pub policy: MigrationPolicy,
    pub max_downtime: Duration,
    /// Pre-copy gives up (rolls back) after this many rounds without converging.
    pub max_rounds: u32,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            mode: MigrationMode::Auto,
            policy: MigrationPolicy::Postcopy,
            max_downtime: Duration::from_millis(DEFAULT_MAX_DOWNTIME_MS),
            max_rounds: MAX_PRECOPY_ROUNDS,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourcePhase {
    Handshake,
    Precopy,
    StopAndCopy,
    AwaitVerdict,
    AwaitSwitch,
    Postcopy,
    Completed,
    RolledBack(String),
    Abandoned(String),
}

/// What one transfer round did (all streams together).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RoundStats {
    pub round: u32,
    /// Non-zero pages sent (what the rate is measured on).
    pub data_pages: u64,
    pub elapsed: Duration,
    /// Pages dirtied again while the round ran.
    pub dirty_after: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SourceEvent {
    /// Every connection is up; `version` was agreed.
    Connected {
        version: u32,
    },
    RoundDone(RoundStats),
    Verdict {
        ok: bool,
        detail: String,
    },
    /// The orchestrator's committed decision on the ownership switch.
    Switch {
        committed: bool,
    },
    /// Post-copy: every missing page has been pushed.
    PushDone,
    Cancel {
        reason: String,
    },
    /// A connection or the destination failed.
    Failed {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceAction {
    /// Send the pages dirty since the last round (round 0: every page).
    Round(u32),
    /// Slow the guest to this percentage of its speed taken away.
    Throttle(u8),
    /// Pause the guest, send what is still dirty as this round, then `Complete`.
    StopAndCopy(u32),
    /// Pause the guest and send `Postcopy` with the pages still dirty as missing.
    StartPostcopy(u32),
    /// The destination holds everything: ask the orchestrator to commit the switch.
    RequestSwitch,
    SendOutcome(bool),
    /// Post-copy: push the missing pages (requests are served meanwhile).
    Push,
    SendAbort(String),
    ResumeGuest,
    /// Done with the guest: it may be destroyed.
    Finish,
}

#[derive(Debug)]
pub struct Source {
    params: Params,
    pub phase: SourcePhase,
    pub round: u32,
    pub throttle: u8,
    postcopy: bool,
    /// Dirty pages left after each round.
    pub history: Vec<u64>,
    data_pages: u64,
    elapsed: Duration,
    /// Bytes per second of the last round that re-sent dirtied pages (rounds after the first
    /// pass): what a stop-and-copy runs like.
    resend_rate: Option<f64>,
}

/// What the switch costs beyond copying the rest (digest check, Raft commit, resume at the
/// destination): 5–14 ms for an idle guest in `paddock bench migration`. Never more than half
/// of `max_downtime`.
const SWITCH_RESERVE: Duration = Duration::from_millis(15);
/// Until a re-send round was measured, re-dirtied pages are assumed this much slower than the
/// first pass (they go through the XOR-delta and compression path; the first pass mostly
/// does not).
const UNMEASURED_RESEND_SLOWDOWN: u32 = 4;

impl Source {
    pub fn new(params: Params) -> Source {
        Source {
            params,
            phase: SourcePhase::Handshake,
            round: 0,
            throttle: 0,
            postcopy: false,
            history: Vec::new(),
            data_pages: 0,
            elapsed: Duration::ZERO,
            resend_rate: None,
        }
    }

    /// Bytes of guest memory moved per second so far (non-zero pages), if measured.
    pub fn rate(&self) -> Option<f64> {
        let secs = self.elapsed.as_secs_f64();
        (secs > 0.0 && self.data_pages > 0).then(|| (self.data_pages * PAGE as u64) as f64 / secs)
    }

    /// The time a stop-and-copy of `dirty` pages would take now: at the last re-send round's
    /// rate once there was one, else at the rate so far.
    pub fn expected_downtime(&self, dirty: u64) -> Duration {
        match self.resend_rate.or(self.rate()) {
            Some(rate) => Duration::from_secs_f64((dirty * PAGE as u64) as f64 / rate),
            None if dirty == 0 => Duration::ZERO,
            None => Duration::MAX,
        }
    }

    /// Whether stopping now to copy `dirty` pages keeps the downtime within `max_downtime`,
    /// switch included.
    fn fits_downtime(&self, dirty: u64) -> bool {
        let max = self.params.max_downtime;
        let budget = max - SWITCH_RESERVE.min(max / 2);
        let copy = self.expected_downtime(dirty);
        let copy = if self.resend_rate.is_some() {
            copy
        } else {
            copy.saturating_mul(UNMEASURED_RESEND_SLOWDOWN)
        };
        copy <= budget
    }

    pub fn is_postcopy(&self) -> bool {
        self.postcopy
    }

    pub fn step(&mut self, event: SourceEvent) -> Vec<SourceAction> {
        use SourceAction as A;
        use SourceEvent as E;
        use SourcePhase as P;
        match (&self.phase, event) {
            (P::Handshake, E::Connected { .. }) => {
                self.phase = P::Precopy;
                vec![A::Round(0)]
            }
            (P::Precopy, E::RoundDone(stats)) => self.after_round(stats),
            (P::StopAndCopy, E::RoundDone(_)) => {
                self.phase = P::AwaitVerdict;
                vec![]
            }
            (P::AwaitVerdict, E::Verdict { ok: true, .. }) => {
                self.phase = P::AwaitSwitch;
                vec![A::RequestSwitch]
            }
            (P::AwaitVerdict, E::Verdict { ok: false, detail }) => {
                self.roll_back(format!("the destination rejected the transfer: {detail}"))
            }
            (P::AwaitSwitch, E::Switch { committed: true }) => {
                if self.postcopy {
                    self.phase = P::Postcopy;
                    vec![A::SendOutcome(true), A::Push]
                } else {
                    self.phase = P::Completed;
                    vec![A::SendOutcome(true), A::Finish]
                }
            }
            (P::AwaitSwitch, E::Switch { committed: false }) => {
                let mut actions = vec![A::SendOutcome(false)];
                actions.extend(self.roll_back("the switch was not committed".into()));
                actions.retain(|a| !matches!(a, A::SendAbort(_)));
                actions
            }
            // Past the request, only the committed outcome decides: a lost connection or a
            // cancel now must not resume the source (the switch may already be committed).
            (P::AwaitSwitch, E::Failed { .. } | E::Cancel { .. }) => vec![],
            (P::Postcopy, E::PushDone) => {
                self.phase = P::Completed;
                vec![A::Finish]
            }
            (P::Postcopy, E::Failed { reason }) => {
                self.phase = P::Abandoned(format!(
                    "post-copy broke after the switch ({reason}); the destination owns the VM"
                ));
                vec![A::Finish]
            }
            (
                P::Handshake | P::Precopy | P::StopAndCopy | P::AwaitVerdict,
                E::Cancel { reason } | E::Failed { reason },
            ) => self.roll_back(reason),
            // Anything else (late messages, repeats) changes nothing.
            _ => vec![],
        }
    }

    fn roll_back(&mut self, reason: String) -> Vec<SourceAction> {
        self.phase = SourcePhase::RolledBack(reason.clone());
        vec![SourceAction::SendAbort(reason), SourceAction::ResumeGuest]
    }

    fn after_round(&mut self, stats: RoundStats) -> Vec<SourceAction> {
        use SourceAction as A;
        self.data_pages += stats.data_pages;
        self.elapsed += stats.elapsed;
        let secs = stats.elapsed.as_secs_f64();
        if stats.round > 0 && stats.data_pages > 0 && secs > 0.0 {
            self.resend_rate = Some((stats.data_pages * PAGE as u64) as f64 / secs);
        }
        self.round = stats.round;
        let previous = self.history.last().copied();
        self.history.push(stats.dirty_after);
        let next = stats.round + 1;
        // Explicit post-copy: resume at the destination right after the first pass.
        if self.params.mode == MigrationMode::Postcopy && stats.dirty_after > 0 {
            return self.start_postcopy(next);
        }
        if self.fits_downtime(stats.dirty_after) {
            self.phase = SourcePhase::StopAndCopy;
            return vec![A::StopAndCopy(next)];
        }
        // Rounds stopped shrinking: less than 10 % better than the round before, or the guest
        // dirtied about as much as the round could send (it outruns the link: more rounds
        // only resend the same pages).
        let outrun = stats.data_pages > 0 && stats.dirty_after * 10 >= stats.data_pages * 9;
        let stalled = outrun
            || (stats.round >= 2
                && previous.is_some_and(|before| stats.dirty_after * 10 >= before * 9));
        let out_of_rounds = stats.round + 1 >= self.params.max_rounds;
        match self.params.mode {
            MigrationMode::Auto if stalled || out_of_rounds => match self.params.policy {
                MigrationPolicy::Postcopy => self.start_postcopy(next),
                MigrationPolicy::Throttle if out_of_rounds => self.roll_back(format!(
                    "did not converge in {} rounds even with the guest throttled to {} %",
                    self.params.max_rounds, self.throttle
                )),
                MigrationPolicy::Throttle => {
                    self.throttle = (self.throttle + 20).min(99);
                    vec![A::Throttle(self.throttle), A::Round(next)]
                }
            },
            MigrationMode::Precopy if out_of_rounds => self.roll_back(format!(
                "pre-copy did not converge in {} rounds ({} pages still dirty per round, max downtime {} ms): use --mode auto or a larger --max-downtime",
                self.params.max_rounds,
                stats.dirty_after,
                self.params.max_downtime.as_millis()
            )),
            _ => vec![A::Round(next)],
        }
    }

    fn start_postcopy(&mut self, round: u32) -> Vec<SourceAction> {
        self.postcopy = true;
        self.phase = SourcePhase::AwaitVerdict;
        vec![SourceAction::StartPostcopy(round)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SourceAction as A;
    use SourceEvent as E;

    fn done(round: u32, data_pages: u64, ms: u64, dirty_after: u64) -> SourceEvent {
        E::RoundDone(RoundStats {
            round,
            data_pages,
            elapsed: Duration::from_millis(ms),
            dirty_after,
        })
    }

    fn params(mode: MigrationMode, policy: MigrationPolicy) -> Params {
        Params {
            mode,
            policy,
            max_downtime: Duration::from_millis(100),
            max_rounds: 6,
        }
    }

    #[test]
    fn an_idle_guest_goes_straight_to_stop_and_copy_then_completes() {
        let mut s = Source::new(Params::default());
        assert_eq!(s.step(E::Connected { version: 1 }), vec![A::Round(0)]);
        // 100k pages in 400 ms = 1 GB/s; 10 dirty pages fit easily.
        assert_eq!(s.step(done(0, 100_000, 400, 10)), vec![A::StopAndCopy(1)]);
        assert_eq!(s.step(done(1, 10, 1, 0)), vec![]);
        assert_eq!(s.phase, SourcePhase::AwaitVerdict);
        assert_eq!(
            s.step(E::Verdict {
                ok: true,
                detail: String::new()
            }),
            vec![A::RequestSwitch]
        );
        assert_eq!(
            s.step(E::Switch { committed: true }),
            vec![A::SendOutcome(true), A::Finish]
        );
        assert_eq!(s.phase, SourcePhase::Completed);
    }

    #[test]
    fn a_busy_guest_iterates_until_the_rest_fits_the_downtime() {
        let mut s = Source::new(Params::default());
        s.step(E::Connected { version: 1 });
        // 1 GB/s: 100 ms = ~24k pages.
        assert_eq!(s.step(done(0, 100_000, 400, 60_000)), vec![A::Round(1)]);
        assert_eq!(s.step(done(1, 60_000, 240, 30_000)), vec![A::Round(2)]);
        assert_eq!(
            s.step(done(2, 30_000, 120, 20_000)),
            vec![A::StopAndCopy(3)]
        );
    }

    #[test]
    fn the_first_pass_rate_is_not_trusted_for_re_sent_pages() {
        let mut s = Source::new(Params::default());
        s.step(E::Connected { version: 1 });
        // 250 pages/ms: 15k pages would take 60 ms at the first pass's rate, but re-sent
        // pages may be 4× slower: one more round measures them.
        assert_eq!(s.step(done(0, 100_000, 400, 15_000)), vec![A::Round(1)]);
        // The re-send ran at 125 pages/ms: 9k pages = 72 ms + the switch fits 100 ms.
        assert_eq!(s.step(done(1, 15_000, 120, 9_000)), vec![A::StopAndCopy(2)]);
    }

    #[test]
    fn the_switch_itself_counts_against_the_downtime() {
        let mut s = Source::new(Params::default());
        s.step(E::Connected { version: 1 });
        s.step(done(0, 100_000, 400, 60_000));
        // 250 pages/ms: 22.5k pages = 90 ms of copy; with the switch that is over 100 ms.
        assert_eq!(s.step(done(1, 60_000, 240, 22_500)), vec![A::Round(2)]);
        // 20k pages = 80 ms + 15 ms of switch: fits.
        assert_eq!(s.step(done(2, 22_500, 90, 20_000)), vec![A::StopAndCopy(3)]);
    }

    #[test]
    fn auto_switches_to_postcopy_when_rounds_stop_shrinking() {
        let mut s = Source::new(params(MigrationMode::Auto, MigrationPolicy::Postcopy));
        s.step(E::Connected { version: 1 });
        assert_eq!(s.step(done(0, 100_000, 400, 50_000)), vec![A::Round(1)]);
        assert_eq!(s.step(done(1, 80_000, 320, 49_000)), vec![A::Round(2)]);
        assert_eq!(
            s.step(done(2, 80_000, 320, 48_500)),
            vec![A::StartPostcopy(3)]
        );
        assert!(s.is_postcopy());
        s.step(E::Verdict {
            ok: true,
            detail: String::new(),
        });
        assert_eq!(
            s.step(E::Switch { committed: true }),
            vec![A::SendOutcome(true), A::Push]
        );
        // The destination dies during post-copy: nothing to resume, HA takes over.
        assert_eq!(
            s.step(E::Failed {
                reason: "link".into()
            }),
            vec![A::Finish]
        );
        assert!(matches!(s.phase, SourcePhase::Abandoned(_)));
    }

    #[test]
    fn a_guest_that_outruns_the_link_goes_postcopy_after_the_first_pass() {
        let mut s = Source::new(params(MigrationMode::Auto, MigrationPolicy::Postcopy));
        s.step(E::Connected { version: 1 });
        // The first pass sent 100k data pages; meanwhile the guest dirtied 95k again.
        assert_eq!(
            s.step(done(0, 100_000, 400, 95_000)),
            vec![A::StartPostcopy(1)]
        );
    }

    #[test]
    fn auto_with_throttle_slows_the_guest_then_gives_up() {
        let mut s = Source::new(params(MigrationMode::Auto, MigrationPolicy::Throttle));
        s.step(E::Connected { version: 1 });
        s.step(done(0, 100_000, 400, 50_000));
        s.step(done(1, 80_000, 320, 49_000));
        assert_eq!(
            s.step(done(2, 80_000, 320, 48_500)),
            vec![A::Throttle(20), A::Round(3)]
        );
        assert_eq!(
            s.step(done(3, 80_000, 320, 48_000)),
            vec![A::Throttle(40), A::Round(4)]
        );
        s.step(done(4, 80_000, 320, 47_600));
        let last = s.step(done(5, 80_000, 320, 47_200));
        assert!(
            matches!(last.as_slice(), [A::SendAbort(_), A::ResumeGuest]),
            "{last:?}"
        );
        assert!(matches!(s.phase, SourcePhase::RolledBack(_)));
    }

    #[test]
    fn plain_precopy_rolls_back_when_it_never_converges() {
        let mut s = Source::new(params(MigrationMode::Precopy, MigrationPolicy::Postcopy));
        s.step(E::Connected { version: 1 });
        for round in 0..5 {
            assert_eq!(
                s.step(done(round, 60_000, 240, 60_000)),
                vec![A::Round(round + 1)]
            );
        }
        let last = s.step(done(5, 60_000, 240, 60_000));
        assert!(
            matches!(last.as_slice(), [A::SendAbort(why), A::ResumeGuest] if why.contains("did not converge"))
        );
    }

    #[test]
    fn postcopy_mode_switches_after_the_first_pass() {
        let mut s = Source::new(params(MigrationMode::Postcopy, MigrationPolicy::Postcopy));
        s.step(E::Connected { version: 1 });
        assert_eq!(
            s.step(done(0, 100_000, 400, 60_000)),
            vec![A::StartPostcopy(1)]
        );
    }

    #[test]
    fn failures_before_the_request_resume_the_source() {
        for failure in [
            E::Failed {
                reason: "destination died".into(),
            },
            E::Cancel {
                reason: "cancelled".into(),
            },
        ] {
            let mut s = Source::new(Params::default());
            s.step(E::Connected { version: 1 });
            s.step(done(0, 100_000, 400, 10));
            let actions = s.step(failure);
            assert_eq!(actions.last(), Some(&A::ResumeGuest));
            assert!(matches!(s.phase, SourcePhase::RolledBack(_)));
        }
        let mut s = Source::new(Params::default());
        s.step(E::Connected { version: 1 });
        s.step(done(0, 100_000, 400, 10));
        s.step(done(1, 10, 1, 0));
        let actions = s.step(E::Verdict {
            ok: false,
            detail: "digest mismatch".into(),
        });
        assert_eq!(actions.last(), Some(&A::ResumeGuest));
    }

    #[test]
    fn after_the_switch_request_only_the_committed_outcome_decides() {
        let mut s = Source::new(Params::default());
        s.step(E::Connected { version: 1 });
        s.step(done(0, 100_000, 400, 10));
        s.step(done(1, 10, 1, 0));
        s.step(E::Verdict {
            ok: true,
            detail: String::new(),
        });
        // The link to the destination breaks and an operator cancels: no resume yet.
        assert_eq!(
            s.step(E::Failed {
                reason: "link".into()
            }),
            vec![]
        );
        assert_eq!(
            s.step(E::Cancel {
                reason: "op".into()
            }),
            vec![]
        );
        assert_eq!(s.phase, SourcePhase::AwaitSwitch);
        // The orchestrator says the switch did not commit: now the source resumes.
        assert_eq!(
            s.step(E::Switch { committed: false }),
            vec![A::SendOutcome(false), A::ResumeGuest]
        );
    }
}
