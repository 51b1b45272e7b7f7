//! Bad flags, configs and data dirs are refused with a message that says what to do.

use std::process::Command;
use std::time::Duration;

use paddock_tests::{binaries, cluster, serial, spec, WAIT};

fn paddockd(args: &[&str]) -> (i32, String) {
    let output = Command::new(binaries().join("paddockd"))
        .args(args)
        .output()
        .expect("run paddockd");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

#[test]
fn bad_flags_are_refused_with_a_clear_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["--data-dir", "/tmp/x"], "--name is required"),
        (
            &[
                "--name",
                "n1",
                "--data-dir",
                "/tmp/x",
                "--certs-dir",
                "/tmp/c",
                "--listen",
                "oops",
            ],
            "not an IP:port",
        ),
        (
            &[
                "--name",
                "n1",
                "--data-dir",
                "/tmp/x",
                "--certs-dir",
                "/tmp/c",
                "--listen",
                "127.0.0.1:1",
                "--peers",
                "n2=127.0.0.1:2",
            ],
            "does not list this node",
        ),
        (
            &["--config", "/nonexistent/paddock.toml"],
            "cannot read config file",
        ),
    ];
    for (args, expected) in cases {
        let (code, stderr) = paddockd(args);
        assert_ne!(code, 0, "{args:?} must fail");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    }
    let (code, stderr) = paddockd(&["--peers", "a=1:2", "--join", "h:1"]);
    assert_eq!(code, 2, "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_dir_refuses_another_name_or_another_cluster() -> anyhow::Result<()> {
    let _serial = serial().await;
    let (_dir, mut cluster) = cluster(spec(1))?;
    cluster.start(0)?;
    cluster.wait_for_leader(WAIT).await?;
    cluster.terminate(0, Duration::from_secs(5));
    let node = &cluster.nodes[0];
    let data_dir = node.data_dir.to_str().unwrap_or_default().to_string();
    let certs = cluster.certs.dir.to_str().unwrap_or_default().to_string();
    cluster.certs.issue_node("other", &["127.0.0.1".into()])?;
    let base = [
        "--data-dir",
        &data_dir,
        "--certs-dir",
        &certs,
        "--listen",
        &node.address,
    ];

    let mut args = base.to_vec();
    args.extend(["--name", "other", "--peers"]);
    let peers = format!("other={}", node.address);
    args.push(&peers);
    let (code, stderr) = paddockd(&args);
    assert_ne!(code, 0);
    assert!(stderr.contains("belongs to node \"n1\""), "{stderr}");

    let mut args = base.to_vec();
    let peers = format!("n1={},n9=127.0.0.1:1", node.address);
    args.extend(["--name", "n1", "--peers", &peers]);
    let (code, stderr) = paddockd(&args);
    assert_ne!(code, 0);
    assert!(stderr.contains("belongs to cluster"), "{stderr}");

    // --join pointing at a member of another cluster (same CA) is refused too.
    let other_dir = tempfile::tempdir()?;
    copy_dir(&cluster.certs.dir, &other_dir.path().join("certs"))?;
    let mut other = paddock_tests::LocalCluster::prepare(
        other_dir.path(),
        &spec(1),
        binaries().join("paddockd"),
    )?;
    other.start(0)?;
    other.wait_for_leader(WAIT).await?;
    let mut args = base.to_vec();
    args.extend(["--name", "n1", "--join", &other.nodes[0].address]);
    let (code, stderr) = paddockd(&args);
    assert_ne!(code, 0);
    assert!(stderr.contains("belongs to cluster"), "{stderr}");
    other.stop_all();

    // A fresh data dir without --peers or --join has nothing to start from.
    let empty = tempfile::tempdir()?;
    let empty_dir = empty.path().to_str().unwrap_or_default().to_string();
    let (code, stderr) = paddockd(&[
        "--name",
        "n1",
        "--data-dir",
        &empty_dir,
        "--certs-dir",
        &certs,
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("holds no cluster yet"), "{stderr}");

    // A reserve larger than the host's memory leaves nothing to offer: refused before the
    // node starts anything.
    let mut args = base.to_vec();
    args.extend(["--name", "n1", "--reserve-memory", "1048576GiB"]);
    let (code, stderr) = paddockd(&args);
    assert_ne!(code, 0);
    assert!(stderr.contains("leaves nothing"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    Ok(())
}
