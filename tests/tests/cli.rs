//! The CLI's exit codes are a contract for scripts: one per kind of refusal, the same for every
//! command, whichever node answers.

use std::process::Command;

use paddock_api::certs::Role;
use paddock_tests::{binaries, cluster, serial, spec, WAIT};

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_follow_the_kind_of_refusal() -> anyhow::Result<()> {
    let _serial = serial().await;
    let (_dir, mut cluster) = cluster(spec(3))?;
    cluster.start_all()?;
    cluster.wait_for_leader(WAIT).await?;
    cluster.certs.issue_client("vera", Role::Viewer)?;
    cluster.certs.issue_client("otto", Role::Operator)?;
    // Every node in turn, so refusals from followers (forwarded) and the leader both count.
    let endpoints = cluster.endpoints();
    let certs = cluster.certs.dir.clone();
    let run = |i: usize, user: &str, args: &[&str]| -> anyhow::Result<(i32, String)> {
        let output = Command::new(binaries().join("paddock"))
            .args(["--endpoint", &endpoints[i % endpoints.len()]])
            .arg("--certs-dir")
            .arg(&certs)
            .args(["--user", user, "--timeout", "10s"])
            .args(args)
            .output()?;
        // What the command printed, answer and error alike.
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok((output.status.code().unwrap_or(-1), text))
    };
    let (code, stderr) = run(
        0,
        "admin",
        &["vm", "create", "web", "--cpus", "1", "--memory", "64MiB"],
    )?;
    assert_eq!(code, 0, "{stderr}");

    // (user, command, exit code, words the message must hold)
    let cases: &[(&str, &[&str], i32, &str)] = &[
        ("admin", &["vm", "show", "nosuch"], 3, "nosuch"),
        (
            "admin",
            &["vm", "migrate", "nosuch"],
            3,
            "VM nosuch does not exist",
        ),
        ("admin", &["migration", "cancel", "999"], 3, "999"),
        ("admin", &["kv", "get", "absent"], 3, "absent"),
        (
            "admin",
            &["vm", "create", "web", "--cpus", "1", "--memory", "64MiB"],
            5,
            "web",
        ),
        (
            "admin",
            &[
                "vm", "create", "Bad Name", "--cpus", "1", "--memory", "64MiB",
            ],
            2,
            "invalid",
        ),
        (
            "admin",
            &["cluster", "set", "scheduler", "random"],
            2,
            "binpack or spread",
        ),
        ("vera", &["kv", "put", "k", "v"], 9, "may not kv.write"),
        (
            "otto",
            &["cluster", "set", "scheduler", "binpack"],
            9,
            "may not cluster.settings.write",
        ),
        ("otto", &["kv", "put", "k", "v"], 0, ""),
        // `--as` asks about another user; the CLI still connects as `--user`.
        (
            "admin",
            &["auth", "can", "vm.migrate", "--as", "nobody"],
            9,
            "nobody may not vm.migrate: it holds no role",
        ),
        ("admin", &["auth", "can", "vm.migrate"], 0, ""),
    ];
    for (i, (user, args, expected, words)) in cases.iter().enumerate() {
        let (code, stderr) = run(i, user, args)?;
        assert_eq!(code, *expected, "{user} {args:?}: {stderr}");
        assert!(
            stderr.contains(words),
            "{user} {args:?}: {stderr:?} lacks {words:?}"
        );
    }
    cluster.stop_all();
    Ok(())
}
