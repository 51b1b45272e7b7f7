//! paddock-chaos: run a cluster under seeded faults and check it (`run`), or re-check a saved
//! run (`check`). Exits 0 only if every checker passes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use paddock_chaos::check::{check_dir, Report};
use paddock_chaos::faults::FaultKind;
use paddock_chaos::run::{run, RunConfig};

#[derive(Debug, Parser)]
#[command(
    name = "paddock-chaos",
    version,
    about = "Chaos runs against real paddockd processes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a cluster, run the workload under faults, check the result.
    Run {
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        #[arg(long, default_value = "60s", value_parser = paddock_cli::output::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Comma-separated: kill, pause, partition, slow (delays or resets), restart-all,
        /// membership (remove a node under load, wipe it, join it again), host-down, host-pause, host-isolate, two-hosts, leader-failover, migration (a live migration hit mid-transfer: source or destination killed or paused, leader killed, link cut); `all` for every kind, `ha` for the host failures, `migrations` for migration faults only.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "kill,pause,partition,slow"
        )]
        faults: Vec<String>,
        /// Comma-separated: kv (register clients), vm (VM lifecycle clients).
        #[arg(long, value_delimiter = ',', default_value = "kv")]
        workload: Vec<String>,
        /// Concurrent clients [default: 2 per node].
        #[arg(long)]
        clients: Option<usize>,
        /// memvm (the embedded driver, local processes) or libvirt (real QEMU hosts in network
        /// namespaces; needs root and testkit/libvirt/install.sh; faults kill, host-pause,
        /// host-isolate, host-down).
        #[arg(long, default_value = "memvm")]
        backend: String,
        /// libvirt backend: HA VMs of the test guest (1–4).
        #[arg(long, default_value_t = 2)]
        vms: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Re-run the checkers on a saved run directory.
    Check { dir: PathBuf },
    /// Many runs, one seed after another (each a `run` in its own process); one CSV line per
    /// run in DIR/soak.csv and the totals in DIR/soak.txt. Exits 0 only if every run passed.
    Soak {
        /// First seed.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Last seed (inclusive).
        #[arg(long, default_value_t = 100)]
        to: u64,
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        #[arg(long, default_value = "60s")]
        duration: String,
        #[arg(long, default_value = "all")]
        faults: String,
        #[arg(long, default_value = "kv")]
        workload: String,
        /// Keep the data dirs, logs and history of passed runs too (failed runs always keep
        /// everything).
        #[arg(long)]
        keep: bool,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("paddock-chaos: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("paddock-chaos: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<bool> {
    match command {
        Command::Run {
            nodes,
            duration,
            seed,
            faults,
            workload,
            clients,
            backend,
            vms,
            out,
        } => {
            anyhow::ensure!(
                matches!(backend.as_str(), "memvm" | "libvirt"),
                "unknown backend {backend:?}: use memvm or libvirt"
            );
            for w in &workload {
                anyhow::ensure!(
                    matches!(w.as_str(), "kv" | "vm"),
                    "unknown workload {w:?}: use kv, vm or kv,vm"
                );
            }
            let has = |w: &str| workload.iter().any(|x| x == w);
            anyhow::ensure!(matches!(nodes, 3 | 5 | 7), "--nodes must be 3, 5 or 7");
            let faults = parse_faults(&faults)?;
            let config = RunConfig {
                nodes,
                duration,
                seed,
                faults,
                clients: if has("kv") {
                    clients.unwrap_or(2 * nodes)
                } else {
                    0
                },
                vm_clients: if has("vm") { 2 } else { 0 },
                out: out.clone(),
            };
            let windows = if backend == "libvirt" {
                anyhow::ensure!(
                    !has("vm"),
                    "--backend libvirt runs its own HA VMs (--vms N); use --workload kv"
                );
                paddock_chaos::libvirt::run(&config, vms).await?
            } else {
                run(&config).await?
            };
            let report = check_dir(&out, &windows)?;
            finish(&out, &report)
        }
        Command::Check { dir } => {
            let windows: Vec<(u64, u64)> = std::fs::read_to_string(dir.join("fault_windows.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            let report = check_dir(&dir, &windows)?;
            finish(&dir, &report)
        }
        Command::Soak {
            from,
            to,
            nodes,
            duration,
            faults,
            workload,
            keep,
            out,
        } => {
            anyhow::ensure!(from <= to, "--from {from} is after --to {to}");
            parse_faults(std::slice::from_ref(&faults))?;
            paddock_chaos::soak::soak(&paddock_chaos::soak::SoakConfig {
                seeds: from..=to,
                nodes,
                duration,
                faults,
                workload,
                keep,
                out,
            })
        }
    }
}

/// Fault names from `--faults` (comma-separated; `all` for every kind, `ha` for the host
/// failures, `migrations` for migrations hit mid-transfer).
fn parse_faults(names: &[String]) -> anyhow::Result<Vec<FaultKind>> {
    let mut kinds = Vec::new();
    for name in names.iter().flat_map(|n| n.split(',')) {
        if name == "all" {
            kinds.extend(FaultKind::ALL);
        } else if name == "ha" {
            kinds.extend(FaultKind::HA);
        } else if name == "migrations" {
            kinds.push(FaultKind::Migration);
        } else {
            kinds.push(FaultKind::parse(name).map_err(anyhow::Error::msg)?);
        }
    }
    kinds.dedup();
    Ok(kinds)
}

fn finish(dir: &std::path::Path, report: &Report) -> anyhow::Result<bool> {
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    let summary = format!(
        "{}\noperations: {} ({} ok, {} fail, {} info)\nlinearizable: {} keys, {} violations, {} unknown\nlost acknowledged writes: {}\nconverged: {} ({} nodes)\navailability: {:.1}% ok outside faults, {:.1}% overall, longest gap {} ms\n",
        if report.valid { "PASS" } else { "FAIL" },
        report.operations.total,
        report.operations.ok,
        report.operations.fail,
        report.operations.info,
        report.linearizable.keys,
        report.linearizable.violations.len(),
        report.linearizable.unknown.len(),
        report.lost_writes.len(),
        report.converged,
        report.nodes.len(),
        report.availability.ok_share_without_faults * 100.0,
        report.availability.ok_share * 100.0,
        report.availability.longest_gap_ms,
    );
    let mut summary = summary;
    if let Some(vms) = &report.vms {
        summary.push_str(&format!(
            "vms: {} ({} running), not converged: {}, host problems: {}, ran twice: {} (of {} run intervals), HA recoveries: {} (worst {} ms), not recovered: {}, non-HA restarted by itself: {}, settled after {}\n",
            vms.vms,
            vms.running,
            vms.not_converged.len(),
            vms.host_problems.len(),
            vms.ran_twice.len(),
            vms.intervals,
            vms.recovery_ms.len(),
            vms.recovery_ms.last().copied().unwrap_or(0),
            vms.not_recovered.len(),
            vms.restarted_by_itself.len(),
            vms.settled_after_ms
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "never".into())
        ));
        if !vms.migrations.is_empty() {
            summary.push_str(&format!(
                "migrations: {}, problems: {}\n",
                vms.migrations
                    .iter()
                    .map(|(phase, n)| format!("{n} {phase}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                vms.migration_problems.len()
            ));
        }
    }
    let mut details = String::new();
    for v in report
        .linearizable
        .violations
        .iter()
        .chain(&report.linearizable.unknown)
        .chain(&report.lost_writes)
        .chain(report.vms.iter().flat_map(|v| {
            v.not_converged
                .iter()
                .chain(&v.host_problems)
                .chain(&v.ran_twice)
                .chain(&v.not_recovered)
                .chain(&v.restarted_by_itself)
                .chain(&v.migration_problems)
        }))
    {
        details.push_str(&format!("  {v}\n"));
    }
    std::fs::write(dir.join("summary.txt"), format!("{summary}{details}"))?;
    print!("{summary}{details}");
    Ok(report.valid)
}
