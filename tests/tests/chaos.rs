//! Short chaos runs: real processes, seeded faults, every checker must pass. Longer soaks are
//! run by hand (docs/chaos.md).

use std::process::Command;

use paddock_tests::{binaries, serial};

#[tokio::test(flavor = "multi_thread")]
async fn a_short_chaos_run_passes_every_checker() -> anyhow::Result<()> {
    let _serial = serial().await;
    let out = tempfile::Builder::new()
        .prefix("paddock-chaos-")
        .tempdir()?;
    // The second run draws from every fault kind, membership changes and restart-all included,
    // with the VM workload beside the KV one.
    // The third fails whole hosts long enough for HA to act (VM checkers: single run, recovery
    // bound, no non-HA VM restarted by itself).
    for (seed, faults, workload, duration) in [
        (1, "kill,pause,partition,slow", "kv", "15s"),
        (
            2,
            "kill,pause,partition,slow,restart-all,membership",
            "kv,vm",
            "15s",
        ),
        (3, "ha", "kv,vm", "25s"),
        // Live migrations hit mid-transfer (seed 1 found a deposed leader's decisions being
        // committed by its successor).
        (1, "migrations", "vm", "25s"),
    ] {
        let dir = out.path().join(format!("run-{seed}-{}", faults.len()));
        let output = Command::new(binaries().join("paddock-chaos"))
            .args([
                "run",
                "--nodes",
                "3",
                "--duration",
                duration,
                "--seed",
                &seed.to_string(),
                "--faults",
                faults,
                "--workload",
                workload,
                "--out",
            ])
            .arg(&dir)
            .output()?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "seed {seed} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.starts_with("PASS"), "{stdout}");
        for file in [
            "history.jsonl",
            "faults.jsonl",
            "report.json",
            "summary.txt",
            "final_state.json",
        ] {
            assert!(dir.join(file).exists(), "{file} missing");
        }
        if workload.contains("vm") {
            assert!(dir.join("vms_final.json").exists());
            assert!(stdout.contains("vms: "), "{stdout}");
        }
        // Re-checking the saved run gives the same verdict.
        let check = Command::new(binaries().join("paddock-chaos"))
            .arg("check")
            .arg(&dir)
            .output()?;
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stdout)
        );
    }
    Ok(())
}
