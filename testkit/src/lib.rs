//! Paddock's test kit (DESIGN.md §2): what `paddock dev`, the benchmarks, the chaos harness and
//! the integration tests share to run real clusters on one machine.
//!
//! - [`local_cluster`]: `paddockd` processes on 127.0.0.1 with their certificates, each in its
//!   own process group (killing a "host" kills its guests), started, killed, restarted, joined;
//! - [`proxy`]: one TCP proxy per directed node-to-node link, to cut, slow or reset it;
//! - [`memvm`]: what the memvm guests recorded (run intervals) and which guest processes live;
//! - [`libvirt_hosts`]: real libvirt hosts in network namespaces (each with its libvirtd, QEMU
//!   and a Paddock node) and the test guest (a Linux kernel whose `/init` checks its memory).
//!
//! It talks to nodes only through the api crate, like the CLI.

pub mod https;
pub mod libvirt_hosts;
pub mod local_cluster;
pub mod memvm;
pub mod proxy;
