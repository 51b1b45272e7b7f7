//! Live migration (DESIGN.md §7): the engine that moves a running guest's memory from a source
//! host to a destination host, directly over the cluster's mutual TLS, never through Raft.
//!
//! - [`source`] and [`destination`]: the protocol as two explicit state machines (a `step` per
//!   side, diagrams in their module docs), free of I/O and tested with scripted events;
//! - [`run`]: the I/O around them — connections, parallel streams, pacing, the guest;
//! - [`wire`]: checksummed frames (fuzzed: malformed input is an error, never a panic);
//! - [`pages`], [`compress`]: zero pages as markers, XOR deltas against the last sent copy
//!   (bounded cache), per-chunk raw/LZ4/ZSTD chosen from measured speed, ratio and link rate;
//! - [`bucket`]: token-bucket bandwidth limit; [`digest`]: the memory digest checked before
//!   the switch; [`memory`]: guest memory with its dirty log; the live figures are the model's
//!   [`Progress`].
//!
//! The protocol, end to end (pre-copy; post-copy replaces `Complete` by `Postcopy` and pushes
//! the missing pages after the outcome while the destination asks for the ones it touches):
//!
//! ```text
//!  source                                   destination            orchestrator (Raft)
//!   │ Hello(versions) ×(2 + streams) ──────▶ │ HelloAck(version)
//!   │ round 0: every page, stream c%N ─────▶ │ apply, digest += page
//!   │ round k: pages dirtied since k-1 ────▶ │
//!   │ (rest fits max_downtime) pause guest   │
//!   │ final round + Complete(cpu, digest) ─▶ │ every stream at the round? digest equal?
//!   │ ◀──────────────────────── Verdict(ok) │
//!   │ ready ─────────────────────────────────────────────────────▶ commit Switch (epoch+1)
//!   │ ◀──────────────────────────────────────────────────────────── committed
//!   │ Outcome(switched) ───────────────────▶ │ load cpu, resume (also when its own agent
//!   │ ◀─────────────────────────── Resumed  │ sees the commit first)
//!   │ destroyed                              │
//! ```
//!
//! Until the switch commits the source owns the VM: any failure before it (destination lost,
//! link cut, bad digest, cancel, timeout) resumes the source. Once the source has asked for the
//! switch, only the committed outcome decides; neither side guesses.

pub mod bucket;
pub mod compress;
pub mod destination;
pub mod digest;
pub mod memory;
pub mod pages;
pub mod run;
pub mod source;
pub mod tls;
pub mod wire;

pub use memory::Memory;
/// The engine reports the model's progress type (shown by `migration show`, kept on the board).
pub use paddock_model::migration::Progress;
pub use source::Params;

/// Bytes per guest page.
pub const PAGE: usize = 4096;
/// Pages per chunk: the unit of dirty tracking, encoding and stream assignment.
pub const CHUNK_PAGES: usize = 64;
/// Protocol versions this build speaks; the handshake picks the highest both sides share.
pub const PROTOCOL_VERSIONS: &[u32] = &[1];
