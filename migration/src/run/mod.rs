//! The I/O around the state machines: connections, stream threads, pacing, and the guest.
//!
//! Connections (each opened by the source, each starting with `Hello` → `HelloAck`):
//! - `Control` (source → destination): final messages, outcome, pages asked for in post-copy;
//! - `Reply` (destination → source): verdict, page requests, "resumed";
//! - `Data(i)` for i in 0..streams (source → destination): chunk `c` always travels on stream
//!   `c % streams`, so successive versions of a page arrive in order.
//!
//! After the handshake every connection is used in one direction only, so a TLS stream never
//! has to be shared between a reading and a writing thread.

mod destination;
mod source;

use std::io::{Read, Write};

pub use destination::{start_destination, Arrival, DestHandle};
pub use source::{start_source, SourceConfig, SourceHandle};

use crate::pages::{PageOp, Taken};
use crate::wire::GuestCpu;

/// A byte stream to the peer (TCP, TLS over TCP, or an in-memory pipe in tests).
pub trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

pub type BoxConn = Box<dyn Conn>;

/// What the source side needs of a running guest.
pub trait SourceGuest: Send + Sync {
    fn pages(&self) -> usize;
    fn start_dirty_log(&self);
    /// Takes the pages of chunk `index` dirtied since they were last taken (all of them
    /// after `start_dirty_log`), clearing their dirty bits: non-zero ones copied into `out`,
    /// zero ones only flagged (see [`crate::Memory::take_chunk`]).
    fn take_chunk(&self, index: usize, out: &mut Vec<u8>) -> Taken;
    /// The same for the given pages, without dirty bookkeeping (post-copy; guest paused).
    fn copy_chunk(&self, index: usize, mask: u64, out: &mut Vec<u8>) -> Taken;
    fn dirty_pages(&self) -> u64;
    /// Takes the whole dirty log (one mask per chunk).
    fn take_dirty_log(&self) -> Vec<u64>;
    fn throttle(&self, percent: u8);
    /// Stops the guest between two steps and returns its CPU state.
    fn pause(&self) -> GuestCpu;
    /// Runs the guest again (rollback): dirty logging and throttling end.
    fn resume(&self);
    /// The digest of the guest memory now (a full pass; the guest is paused).
    fn digest(&self) -> u64;
}

/// What the destination side needs of the incoming guest.
pub trait DestGuest: Send + Sync {
    fn pages(&self) -> usize;
    /// Writes decoded pages, checking each against its crc32; a post-copy page only if still
    /// missing. Returns pages written, or which page arrived corrupted.
    fn apply(&self, ops: &[PageOp], data: &[u8], postcopy: bool) -> Result<usize, String>;
    /// The digest of what has been received.
    fn received_digest(&self) -> u64;
    fn set_missing(&self, pages: &[u32]);
    fn missing(&self) -> usize;
}
