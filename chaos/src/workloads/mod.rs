//! The workloads a chaos run drives while faults fire.

pub mod kv;
pub mod vm;
