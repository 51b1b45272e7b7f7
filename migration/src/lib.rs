//! Live migration (DESIGN.md §7): the source/destination protocol state machines, page codecs
//! (zero pages, XOR delta, LZ4/ZSTD), bandwidth limiting and the pre-copy/post-copy planner.
//!
//! Not implemented yet: the "Live migration" issue fills this crate.
