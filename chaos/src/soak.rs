//! Soaks: many seeded runs one after another, each `paddock-chaos run` in its own process (a
//! crashed or wedged run cannot take the others with it), with one CSV line per run and the
//! totals that `docs/benchmarks.md` records.

use std::io::Write;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;

use crate::check::Report;

pub struct SoakConfig {
    pub seeds: RangeInclusive<u64>,
    pub nodes: usize,
    pub duration: String,
    pub faults: String,
    pub workload: String,
    pub keep: bool,
    pub out: PathBuf,
}

const HEADER: &str = "seed,verdict,operations,ok,info,faults,violations,unknown,lost_writes,converged,ok_share_without_faults,longest_gap_ms,seconds,vm_problems,ran_twice,ha_recoveries,worst_recovery_ms";

/// One finished run, as the CSV line records it.
struct RunLine {
    seed: u64,
    report: Option<Report>,
    faults: usize,
    seconds: f64,
}

impl RunLine {
    fn passed(&self) -> bool {
        self.report.as_ref().is_some_and(|r| r.valid)
    }

    fn csv(&self) -> String {
        let verdict = match &self.report {
            Some(r) if r.valid => "pass",
            Some(_) => "fail",
            None => "error",
        };
        match &self.report {
            Some(r) => {
                let (problems, twice, recoveries, worst) = r.vms.as_ref().map_or(
                    (String::new(), String::new(), String::new(), String::new()),
                    |v| {
                        (
                            (v.not_converged.len()
                                + v.host_problems.len()
                                + v.not_recovered.len()
                                + v.restarted_by_itself.len())
                            .to_string(),
                            v.ran_twice.len().to_string(),
                            v.recovery_ms.len().to_string(),
                            v.recovery_ms.last().map(u64::to_string).unwrap_or_default(),
                        )
                    },
                );
                format!(
                    "{},{verdict},{},{},{},{},{},{},{},{},{:.3},{},{:.0},{problems},{twice},{recoveries},{worst}",
                    self.seed,
                    r.operations.total,
                    r.operations.ok,
                    r.operations.info,
                    self.faults,
                    r.linearizable.violations.len(),
                    r.linearizable.unknown.len(),
                    r.lost_writes.len(),
                    r.converged,
                    r.availability.ok_share_without_faults,
                    r.availability.longest_gap_ms,
                    self.seconds
                )
            }
            None => format!(
                "{},{verdict},,,,{},,,,,,,{:.0},,,,",
                self.seed, self.faults, self.seconds
            ),
        }
    }
}

/// Runs every seed; returns whether all passed.
pub fn soak(config: &SoakConfig) -> anyhow::Result<bool> {
    std::fs::create_dir_all(&config.out)
        .with_context(|| format!("cannot create {}", config.out.display()))?;
    let exe = std::env::current_exe().context("cannot locate paddock-chaos itself")?;
    let csv_path = config.out.join("soak.csv");
    let mut csv = std::fs::File::create(&csv_path)
        .with_context(|| format!("cannot create {}", csv_path.display()))?;
    writeln!(csv, "{HEADER}")?;
    let mut lines = Vec::new();
    for seed in config.seeds.clone() {
        let dir = config.out.join(format!("seed-{seed}"));
        let started = Instant::now();
        let status = Command::new(&exe)
            .args(["run", "--nodes", &config.nodes.to_string()])
            .args(["--duration", &config.duration, "--seed", &seed.to_string()])
            .args([
                "--faults",
                &config.faults,
                "--workload",
                &config.workload,
                "--out",
            ])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .status()
            .context("cannot start a run")?;
        let line = RunLine {
            seed,
            report: read_report(&dir),
            faults: count_faults(&dir),
            seconds: started.elapsed().as_secs_f64(),
        };
        if !status.success() && line.passed() {
            anyhow::bail!("seed {seed}: the run exited with {status} but its report says pass");
        }
        writeln!(csv, "{}", line.csv())?;
        csv.flush()?;
        println!("{}", line.csv());
        if line.passed() && !config.keep {
            // Keep the verdict and the fault log; the data dirs and history are large.
            let _ = std::fs::remove_dir_all(dir.join("cluster"));
            let _ = std::fs::remove_file(dir.join("history.jsonl"));
        }
        lines.push(line);
    }
    let totals = totals(&lines);
    std::fs::write(config.out.join("soak.txt"), &totals)?;
    print!("{totals}");
    Ok(lines.iter().all(RunLine::passed))
}

fn read_report(dir: &Path) -> Option<Report> {
    let text = std::fs::read_to_string(dir.join("report.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Faults that started (`"action":"start"` lines of faults.jsonl).
fn count_faults(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("faults.jsonl"))
        .map(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["action"] == "start")
                .count()
        })
        .unwrap_or(0)
}

fn totals(lines: &[RunLine]) -> String {
    let reports: Vec<&Report> = lines.iter().filter_map(|l| l.report.as_ref()).collect();
    let sum = |f: &dyn Fn(&Report) -> usize| reports.iter().map(|r| f(r)).sum::<usize>();
    let mut gaps: Vec<u64> = reports
        .iter()
        .map(|r| r.availability.longest_gap_ms)
        .collect();
    gaps.sort_unstable();
    let median_gap = gaps.get(gaps.len() / 2).copied().unwrap_or(0);
    let max_gap = gaps.last().copied().unwrap_or(0);
    let mean_ok = if reports.is_empty() {
        0.0
    } else {
        reports
            .iter()
            .map(|r| r.availability.ok_share_without_faults)
            .sum::<f64>()
            / reports.len() as f64
    };
    let vm_reports: Vec<_> = reports.iter().filter_map(|r| r.vms.as_ref()).collect();
    let mut recoveries: Vec<u64> = vm_reports
        .iter()
        .flat_map(|v| v.recovery_ms.iter().copied())
        .collect();
    recoveries.sort_unstable();
    let vm_line = if vm_reports.is_empty() {
        String::new()
    } else {
        format!(
            "VM runs: {}; ran twice: {}; HA recoveries: {} (median {} ms, worst {} ms); not recovered: {}; non-HA restarted by itself: {}; not converged: {}; migrations: {} ({} completed), migration problems: {}\n",
            vm_reports.len(),
            vm_reports.iter().map(|v| v.ran_twice.len()).sum::<usize>(),
            recoveries.len(),
            recoveries.get(recoveries.len() / 2).copied().unwrap_or(0),
            recoveries.last().copied().unwrap_or(0),
            vm_reports.iter().map(|v| v.not_recovered.len()).sum::<usize>(),
            vm_reports.iter().map(|v| v.restarted_by_itself.len()).sum::<usize>(),
            vm_reports
                .iter()
                .map(|v| v.not_converged.len() + v.host_problems.len())
                .sum::<usize>(),
            vm_reports
                .iter()
                .flat_map(|v| v.migrations.values())
                .sum::<usize>(),
            vm_reports
                .iter()
                .filter_map(|v| v.migrations.get("completed"))
                .sum::<usize>(),
            vm_reports
                .iter()
                .map(|v| v.migration_problems.len())
                .sum::<usize>(),
        )
    };
    let base = format!(
        "runs: {} ({} passed, {} failed, {} without a report)\noperations: {} ({} ok, {} info)\nfaults injected: {}\nlinearizability violations: {} (unknown: {})\nlost acknowledged writes: {}\nruns not converged: {}\nok share outside faults: {:.1}% (mean)\nlongest unavailability window: median {} ms, worst {} ms\n",
        lines.len(),
        lines.iter().filter(|l| l.passed()).count(),
        reports.iter().filter(|r| !r.valid).count(),
        lines.len() - reports.len(),
        sum(&|r| r.operations.total),
        sum(&|r| r.operations.ok),
        sum(&|r| r.operations.info),
        lines.iter().map(|l| l.faults).sum::<usize>(),
        sum(&|r| r.linearizable.violations.len()),
        sum(&|r| r.linearizable.unknown.len()),
        sum(&|r| r.lost_writes.len()),
        reports.iter().filter(|r| !r.converged).count(),
        mean_ok * 100.0,
        median_gap,
        max_gap,
    );
    base + &vm_line
}
