//! The destination side as an explicit state machine (see [`crate::source`] for the other).
//!
//! ```text
//!  AwaitHello ─Hello (shared version)─▶ Receiving ─Complete + every stream at its round─▶ Verifying
//!       └─Hello (no shared version)─▶ Discarded                                             │
//!  Verifying ─Digest equal─▶ AwaitSwitch ─Outcome switched─▶ Running (resume, "Resumed")
//!            └─Digest differs─▶ Discarded (verdict bad: the source resumes)
//!  Receiving ─Postcopy + every stream at its round─▶ AwaitSwitch ─Outcome switched─▶ Postcopy
//!  Postcopy ─AllArrived─▶ Running        Postcopy ─Failed─▶ Discarded (source lost: guest dies)
//!  Receiving/Verifying ─Abort/Failed/Outcome not switched─▶ Discarded
//!  AwaitSwitch ─Failed─▶ stays (the switch may have committed; the agent will tell)
//! ```
//!
//! The destination never resumes on its own judgement: only an `Outcome { switched: true }`
//! (from the source after the commit, or from its own agent that saw the commit) does it.

use crate::wire::GuestCpu;
use crate::PROTOCOL_VERSIONS;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestPhase {
    AwaitHello,
    Receiving,
    Verifying,
    AwaitSwitch,
    Postcopy,
    Running,
    Discarded(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestEvent {
    Hello {
        versions: Vec<u32>,
        streams: u16,
    },
    RoundEnd {
        stream: u16,
        round: u32,
    },
    Complete {
        round: u32,
        cpu: GuestCpu,
        digest: u64,
    },
    Postcopy {
        round: u32,
        cpu: GuestCpu,
        missing: Vec<u32>,
    },
    /// The digest of the received memory, computed on request.
    Digest(u64),
    Outcome {
        switched: bool,
    },
    /// Post-copy: no page is missing any more.
    AllArrived,
    Abort {
        reason: String,
    },
    Failed {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestAction {
    Accept {
        version: u32,
    },
    Refuse(String),
    ComputeDigest,
    MarkMissing(Vec<u32>),
    SendVerdict {
        ok: bool,
        detail: String,
    },
    /// Load the CPU state and run the guest; then tell the source.
    Resume(GuestCpu),
    /// Throw the incoming guest away.
    Discard(String),
}

/// The highest protocol version both sides speak.
pub fn negotiate(offered: &[u32]) -> Option<u32> {
    offered
        .iter()
        .copied()
        .filter(|v| PROTOCOL_VERSIONS.contains(v))
        .max()
}

#[derive(Debug)]
enum Final {
    Precopy { cpu: GuestCpu, digest: u64 },
    Postcopy { cpu: GuestCpu, missing: Vec<u32> },
}

#[derive(Debug)]
pub struct Destination {
    pub phase: DestPhase,
    streams: u16,
    /// Last round each data stream finished.
    rounds: Vec<Option<u32>>,
    /// The final message, waiting for every stream to catch up with its round.
    pending: Option<(u32, Final)>,
    cpu: Option<GuestCpu>,
    postcopy: bool,
}

impl Default for Destination {
    fn default() -> Destination {
        Destination::new()
    }
}

impl Destination {
    pub fn new() -> Destination {
        Destination {
            phase: DestPhase::AwaitHello,
            streams: 0,
            rounds: Vec::new(),
            pending: None,
            cpu: None,
            postcopy: false,
        }
    }

    pub fn step(&mut self, event: DestEvent) -> Vec<DestAction> {
        use DestAction as A;
        use DestEvent as E;
        use DestPhase as P;
        match (&self.phase, event) {
            (P::AwaitHello, E::Hello { versions, streams }) => match negotiate(&versions) {
                Some(version) if streams > 0 => {
                    self.streams = streams;
                    self.rounds = vec![None; streams as usize];
                    self.phase = P::Receiving;
                    vec![A::Accept { version }]
                }
                _ => {
                    let why = format!(
                        "no shared protocol version (source offers {versions:?}, this node speaks {PROTOCOL_VERSIONS:?}) or no data stream"
                    );
                    self.phase = P::Discarded(why.clone());
                    vec![A::Refuse(why)]
                }
            },
            (P::Receiving, E::RoundEnd { stream, round }) => {
                if let Some(slot) = self.rounds.get_mut(stream as usize) {
                    *slot = Some(slot.map_or(round, |r| r.max(round)));
                }
                self.try_finish()
            }
            (P::Receiving, E::Complete { round, cpu, digest }) => {
                self.pending = Some((round, Final::Precopy { cpu, digest }));
                self.try_finish()
            }
            (
                P::Receiving,
                E::Postcopy {
                    round,
                    cpu,
                    missing,
                },
            ) => {
                self.pending = Some((round, Final::Postcopy { cpu, missing }));
                self.try_finish()
            }
            (P::Verifying, E::Digest(value)) => {
                let expected = match &self.pending {
                    Some((_, Final::Precopy { digest, .. })) => *digest,
                    _ => return vec![],
                };
                if value == expected {
                    self.phase = P::AwaitSwitch;
                    vec![A::SendVerdict {
                        ok: true,
                        detail: String::new(),
                    }]
                } else {
                    let why = format!(
                        "memory digest mismatch: received {value:016x}, source sent {expected:016x}"
                    );
                    self.phase = P::Discarded(why.clone());
                    vec![
                        A::SendVerdict {
                            ok: false,
                            detail: why.clone(),
                        },
                        A::Discard(why),
                    ]
                }
            }
            (P::AwaitSwitch, E::Outcome { switched: true }) => {
                let Some(cpu) = self.cpu.take() else {
                    return vec![];
                };
                self.phase = if self.postcopy {
                    P::Postcopy
                } else {
                    P::Running
                };
                vec![A::Resume(cpu)]
            }
            (P::Postcopy, E::AllArrived) => {
                self.phase = P::Running;
                vec![]
            }
            (P::Postcopy, E::Failed { reason }) => {
                let why = format!("post-copy source lost before every page arrived: {reason}");
                self.phase = P::Discarded(why.clone());
                vec![A::Discard(why)]
            }
            (P::AwaitSwitch, E::Outcome { switched: false } | E::Abort { .. }) => {
                self.discard("the switch was not committed".into())
            }
            (
                P::AwaitHello | P::Receiving | P::Verifying,
                E::Abort { reason } | E::Failed { reason },
            ) => self.discard(reason),
            (P::AwaitHello | P::Receiving | P::Verifying, E::Outcome { switched: false }) => {
                self.discard("the switch was not committed".into())
            }
            _ => vec![],
        }
    }

    fn discard(&mut self, reason: String) -> Vec<DestAction> {
        self.phase = DestPhase::Discarded(reason.clone());
        vec![DestAction::Discard(reason)]
    }

    /// Moves on once the final message is in and every stream has finished its round (so
    /// no older page can land after the check).
    fn try_finish(&mut self) -> Vec<DestAction> {
        let Some((round, _)) = &self.pending else {
            return vec![];
        };
        if !self.rounds.iter().all(|r| r.is_some_and(|r| r >= *round)) {
            return vec![];
        }
        match self.pending.take() {
            Some((round, Final::Precopy { cpu, digest })) => {
                self.cpu = Some(cpu.clone());
                self.pending = Some((round, Final::Precopy { cpu, digest }));
                self.phase = DestPhase::Verifying;
                vec![DestAction::ComputeDigest]
            }
            Some((_, Final::Postcopy { cpu, missing })) => {
                self.cpu = Some(cpu);
                self.postcopy = true;
                self.phase = DestPhase::AwaitSwitch;
                vec![
                    DestAction::MarkMissing(missing),
                    DestAction::SendVerdict {
                        ok: true,
                        detail: String::new(),
                    },
                ]
            }
            None => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DestAction as A;
    use DestEvent as E;

    fn cpu() -> GuestCpu {
        GuestCpu {
            counter: 42,
            device: vec![1, 2, 3],
        }
    }

    fn hello(d: &mut Destination, streams: u16) {
        assert_eq!(
            d.step(E::Hello {
                versions: vec![1],
                streams
            }),
            vec![A::Accept { version: 1 }]
        );
    }

    #[test]
    fn precopy_waits_for_every_stream_then_verifies_then_resumes_only_on_commit() {
        let mut d = Destination::new();
        hello(&mut d, 2);
        d.step(E::RoundEnd {
            stream: 0,
            round: 0,
        });
        d.step(E::RoundEnd {
            stream: 1,
            round: 0,
        });
        d.step(E::RoundEnd {
            stream: 0,
            round: 1,
        });
        // Complete for round 1 arrives before stream 1 finished it: wait.
        assert_eq!(
            d.step(E::Complete {
                round: 1,
                cpu: cpu(),
                digest: 7
            }),
            vec![]
        );
        assert_eq!(
            d.step(E::RoundEnd {
                stream: 1,
                round: 1
            }),
            vec![A::ComputeDigest]
        );
        assert_eq!(
            d.step(E::Digest(7)),
            vec![A::SendVerdict {
                ok: true,
                detail: String::new()
            }]
        );
        // A broken link now does not resume nor discard: the outcome decides.
        assert_eq!(
            d.step(E::Failed {
                reason: "link".into()
            }),
            vec![]
        );
        assert_eq!(
            d.step(E::Outcome { switched: true }),
            vec![A::Resume(cpu())]
        );
        assert_eq!(d.phase, DestPhase::Running);
        // A repeated outcome (the agent saw the commit too) changes nothing.
        assert_eq!(d.step(E::Outcome { switched: true }), vec![]);
    }

    #[test]
    fn a_digest_mismatch_is_reported_and_discards() {
        let mut d = Destination::new();
        hello(&mut d, 1);
        d.step(E::Complete {
            round: 0,
            cpu: cpu(),
            digest: 7,
        });
        assert_eq!(
            d.step(E::RoundEnd {
                stream: 0,
                round: 0
            }),
            vec![A::ComputeDigest]
        );
        let actions = d.step(E::Digest(8));
        assert!(matches!(
            actions.as_slice(),
            [A::SendVerdict { ok: false, .. }, A::Discard(_)]
        ));
    }

    #[test]
    fn unknown_versions_are_refused() {
        let mut d = Destination::new();
        let actions = d.step(E::Hello {
            versions: vec![99],
            streams: 1,
        });
        assert!(matches!(actions.as_slice(), [A::Refuse(why)] if why.contains("[99]")));
        assert_eq!(negotiate(&[1, 2, 99]), Some(1));
    }

    #[test]
    fn postcopy_marks_missing_pages_and_dies_with_its_source() {
        let mut d = Destination::new();
        hello(&mut d, 1);
        d.step(E::RoundEnd {
            stream: 0,
            round: 0,
        });
        let actions = d.step(E::Postcopy {
            round: 0,
            cpu: cpu(),
            missing: vec![5, 6],
        });
        assert_eq!(actions[0], A::MarkMissing(vec![5, 6]));
        assert_eq!(
            d.step(E::Outcome { switched: true }),
            vec![A::Resume(cpu())]
        );
        assert_eq!(d.phase, DestPhase::Postcopy);
        let actions = d.step(E::Failed {
            reason: "eof".into(),
        });
        assert!(matches!(actions.as_slice(), [A::Discard(_)]));
    }

    #[test]
    fn an_abort_before_the_switch_discards() {
        let mut d = Destination::new();
        hello(&mut d, 1);
        assert!(matches!(
            d.step(E::Abort {
                reason: "cancelled".into()
            })
            .as_slice(),
            [A::Discard(_)]
        ));
    }
}
