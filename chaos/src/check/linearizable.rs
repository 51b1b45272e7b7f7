//! Linearizability of a key/value register history: Wing & Gong's search with Lowe's
//! memoization, as in porcupine.
//!
//! The operations of one key are laid out as call and return entries in time order, in a
//! doubly linked list. The search walks the list: at a call it tries to linearize that
//! operation now (the register model says whether that is legal and what the new state is),
//! removing its call and return from the list; at a return it has run past an operation that
//! must already have taken effect, so it backtracks. A cache of (set of linearized operations,
//! register state) pairs already explored keeps the search from repeating itself. Operations
//! with unknown outcome end at infinity: they may take effect anywhere after their call, and
//! taking effect last is the same as never.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::history::{Action, Operation};

/// The verdict for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order of the operations explains the results. `stuck_at` is the operation the
    /// deepest search could not place.
    NotLinearizable {
        operations: usize,
        stuck_at: Operation,
    },
    /// The search exceeded its step budget; shorten the per-key histories.
    Unknown {
        steps: u64,
    },
}

const NONE: usize = usize::MAX;

/// Checks one key's operations, giving up (verdict `Unknown`) after `budget` search steps.
pub fn check_key(ops: &[Operation], budget: u64) -> Verdict {
    if ops.is_empty() {
        return Verdict::Linearizable;
    }
    // Intern values: the register state is a small integer (0 = absent).
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut id = |s: &str| -> u32 {
        let next = ids.len() as u32 + 1;
        *ids.entry(s.to_string()).or_insert(next)
    };
    let steps: Vec<Step> = ops
        .iter()
        .map(|op| match &op.action {
            Action::Read(v) => Step::Read(v.as_deref().map_or(0, &mut id)),
            Action::Write(v) => Step::Write(id(v)),
            Action::Cas { expected, new } => Step::Cas {
                expected: id(expected),
                new: id(new),
                unknown: op.ret == u64::MAX,
            },
        })
        .collect();

    // Entries: index 0 is the head sentinel; 1 + 2i is op i's call, 2 + 2i its return.
    let n = ops.len();
    let mut order: Vec<usize> = (0..2 * n).map(|e| e + 1).collect();
    let time = |entry: usize| {
        let op = &ops[(entry - 1) / 2];
        if entry % 2 == 1 {
            (op.call, 0)
        } else {
            (op.ret, 1)
        }
    };
    order.sort_by_key(|&e| time(e));
    let mut next = vec![NONE; 2 * n + 1];
    let mut prev = vec![NONE; 2 * n + 1];
    let mut last = 0;
    for &e in &order {
        next[last] = e;
        prev[e] = last;
        last = e;
    }

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, u32)> = HashSet::new();
    let mut stack: Vec<(usize, u32)> = Vec::new();
    let mut state = 0u32;
    let mut cur = next[0];
    let mut count = 0u64;
    let mut deepest = (0usize, 0usize);
    while next[0] != NONE {
        count += 1;
        if count > budget {
            return Verdict::Unknown { steps: count };
        }
        let op = (cur - 1) / 2;
        if cur % 2 == 1 {
            if let Some(new_state) = steps[op].apply(state) {
                linearized[op / 64] |= 1 << (op % 64);
                if cache.insert((linearized.clone(), new_state)) {
                    stack.push((cur, state));
                    state = new_state;
                    lift(&mut next, &mut prev, cur);
                    cur = next[0];
                    continue;
                }
                linearized[op / 64] &= !(1 << (op % 64));
            }
            cur = next[cur];
        } else {
            if stack.len() >= deepest.0 {
                deepest = (stack.len(), op);
            }
            let Some((entry, previous)) = stack.pop() else {
                return Verdict::NotLinearizable {
                    operations: n,
                    stuck_at: ops[deepest.1].clone(),
                };
            };
            let undone = (entry - 1) / 2;
            state = previous;
            linearized[undone / 64] &= !(1 << (undone % 64));
            unlift(&mut next, &mut prev, entry);
            cur = next[entry];
        }
    }
    Verdict::Linearizable
}

/// Removes a call entry and its return entry from the list.
fn lift(next: &mut [usize], prev: &mut [usize], call: usize) {
    let ret = call + 1;
    next[prev[call]] = next[call];
    prev[next[call]] = prev[call];
    next[prev[ret]] = next[ret];
    if next[ret] != NONE {
        prev[next[ret]] = prev[ret];
    }
}

/// Puts them back (the exact reverse of [`lift`]).
fn unlift(next: &mut [usize], prev: &mut [usize], call: usize) {
    let ret = call + 1;
    next[prev[ret]] = ret;
    if next[ret] != NONE {
        prev[next[ret]] = ret;
    }
    next[prev[call]] = call;
    prev[next[call]] = call;
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Read(u32),
    Write(u32),
    Cas {
        expected: u32,
        new: u32,
        unknown: bool,
    },
}

impl Step {
    /// The register model: whether the step is legal in `state`, and the state after it.
    fn apply(self, state: u32) -> Option<u32> {
        match self {
            Step::Read(v) => (v == state).then_some(state),
            Step::Write(v) => Some(v),
            Step::Cas { expected, new, .. } if expected == state => Some(new),
            // An unknown-outcome CAS that finds another value simply did not swap.
            Step::Cas { unknown: true, .. } => Some(state),
            Step::Cas { .. } => None,
        }
    }
}

/// Checks every key, in parallel on the machine's cores.
pub fn check_all(
    by_key: &BTreeMap<String, Vec<Operation>>,
    budget: u64,
) -> BTreeMap<String, Verdict> {
    let keys: Vec<(&String, &Vec<Operation>)> = by_key.iter().collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(keys.len().max(1));
    let chunk = keys.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = keys
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(key, ops)| ((*key).clone(), check_key(ops, budget)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{operations_by_key, parse};

    const BUDGET: u64 = 1_000_000;

    fn op(process: u64, action: Action, call: u64, ret: u64) -> Operation {
        Operation {
            process,
            action,
            call,
            ret,
        }
    }
    fn w(v: &str) -> Action {
        Action::Write(v.into())
    }
    fn r(v: Option<&str>) -> Action {
        Action::Read(v.map(Into::into))
    }
    fn cas(e: &str, n: &str) -> Action {
        Action::Cas {
            expected: e.into(),
            new: n.into(),
        }
    }

    #[test]
    fn a_sequential_history_is_linearizable() {
        let ops = [
            op(1, r(None), 0, 1),
            op(1, w("a"), 2, 3),
            op(2, r(Some("a")), 4, 5),
            op(2, cas("a", "b"), 6, 7),
            op(1, r(Some("b")), 8, 9),
        ];
        assert_eq!(check_key(&ops, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_is_caught() {
        let ops = [
            op(1, w("a"), 0, 1),
            op(1, w("b"), 2, 3),
            // Starts after b was acknowledged, yet sees a.
            op(2, r(Some("a")), 4, 5),
        ];
        assert!(matches!(
            check_key(&ops, BUDGET),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn a_lost_write_is_caught() {
        let ops = [op(1, w("a"), 0, 1), op(2, r(None), 5, 6)];
        let verdict = check_key(&ops, BUDGET);
        match verdict {
            Verdict::NotLinearizable { stuck_at, .. } => assert_eq!(stuck_at.process, 2),
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn a_non_linearizable_cas_is_caught() {
        let ops = [
            op(1, w("a"), 0, 1),
            // Both CASes claim to have swapped a: only one can have.
            op(1, cas("a", "b"), 2, 3),
            op(2, cas("a", "c"), 4, 5),
        ];
        assert!(matches!(
            check_key(&ops, BUDGET),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        let ops = [
            op(1, w("a"), 0, 10),
            op(2, r(None), 1, 2),
            op(3, r(Some("a")), 3, 4),
            op(4, w("b"), 5, 12),
            op(5, r(Some("a")), 11, 13),
            op(6, r(Some("b")), 14, 15),
        ];
        assert_eq!(check_key(&ops, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_have_happened() {
        let never = [op(1, w("a"), 0, u64::MAX), op(2, r(None), 5, 6)];
        assert_eq!(check_key(&never, BUDGET), Verdict::Linearizable);
        let happened = [op(1, w("a"), 0, u64::MAX), op(2, r(Some("a")), 5, 6)];
        assert_eq!(check_key(&happened, BUDGET), Verdict::Linearizable);
        let cas_unknown = [
            op(1, w("a"), 0, 1),
            op(2, cas("a", "b"), 2, u64::MAX),
            op(3, r(Some("a")), 3, 4),
            op(3, r(Some("b")), 5, 6),
        ];
        assert_eq!(check_key(&cas_unknown, BUDGET), Verdict::Linearizable);
        // But an unknown write cannot explain a value nobody wrote.
        let impossible = [op(1, w("a"), 0, u64::MAX), op(2, r(Some("z")), 5, 6)];
        assert!(matches!(
            check_key(&impossible, BUDGET),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn the_budget_bounds_the_search() {
        // Many concurrent writes and a read that matches none of them: the search must try
        // every order before giving up, which takes more than 10 steps.
        let mut ops: Vec<Operation> = (0..12)
            .map(|i| op(i, w(&format!("v{i}")), 0, 100))
            .collect();
        ops.push(op(99, r(Some("nope")), 200, 201));
        assert!(matches!(check_key(&ops, 10), Verdict::Unknown { .. }));
        assert!(matches!(
            check_key(&ops, BUDGET),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn histories_parse_and_check_per_key() {
        let text = r#"
{"type":"invoke","process":1,"f":"write","key":"k1","value":"a","time":1,"node":"n1"}
{"type":"ok","process":1,"f":"write","key":"k1","value":"a","time":2,"node":"n1"}
{"type":"invoke","process":2,"f":"cas","key":"k1","value":["x","y"],"time":3,"node":"n2"}
{"type":"fail","process":2,"f":"cas","key":"k1","value":["x","y"],"time":4,"node":"n2"}
{"type":"invoke","process":3,"f":"read","key":"k1","value":null,"time":5,"node":"n3"}
{"type":"ok","process":3,"f":"read","key":"k1","value":"a","time":6,"node":"n3"}
{"type":"invoke","process":4,"f":"read","key":"k2","value":null,"time":7,"node":"n1"}
{"type":"ok","process":4,"f":"read","key":"k2","value":"ghost","time":8,"node":"n1"}
{"type":"invoke","process":5,"f":"write","key":"k2","value":"b","time":9,"node":"n1"}
{"type":"info","process":5,"f":"write","key":"k2","value":"b","time":10,"node":"n1"}
"#;
        let events = parse(text).expect("parse");
        let by_key = operations_by_key(&events).expect("pair");
        assert_eq!(by_key["k1"].len(), 2, "the failed CAS is dropped");
        assert_eq!(by_key["k2"][1].ret, u64::MAX, "info leaves the end open");
        let verdicts = check_all(&by_key, BUDGET);
        assert_eq!(verdicts["k1"], Verdict::Linearizable);
        assert!(
            matches!(verdicts["k2"], Verdict::NotLinearizable { .. }),
            "a read of a value written only later is caught"
        );
    }
}
