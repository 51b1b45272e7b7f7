//! Disk images on a 3-node memvm cluster: imported through the CLI to one node, fetched by
//! every other node over mutual TLS with the hash checked (also by a node that was down during
//! the import), named by VMs, protected while in use, removed everywhere when deleted.

use std::path::Path;
use std::process::Command;

use paddock_testkit::local_cluster::LocalCluster;
use paddock_tests::{binaries, memvm_cluster, serial, until, WAIT};

fn paddock(cluster: &LocalCluster, i: usize, args: &[&str]) -> anyhow::Result<(i32, String)> {
    let output = Command::new(binaries().join("paddock"))
        .args(["--endpoint", &cluster.endpoints()[i]])
        .arg("--certs-dir")
        .arg(&cluster.certs.dir)
        .args(["--timeout", "20s"])
        .args(args)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.code().unwrap_or(-1), text))
}

fn sha256sum(path: &Path) -> anyhow::Result<String> {
    let out = Command::new("sha256sum").arg(path).output()?;
    anyhow::ensure!(out.status.success(), "sha256sum failed");
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

fn copy_of(cluster: &LocalCluster, i: usize, sha: &str) -> std::path::PathBuf {
    cluster.nodes[i]
        .data_dir
        .join("images")
        .join(format!("sha256-{sha}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn images_reach_every_node_verified_and_leave_when_deleted() -> anyhow::Result<()> {
    let _serial = serial().await;
    let (dir, mut cluster) = memvm_cluster(&[]).await?;
    // 5 MiB and a bit (several transfer chunks, the last one short), not compressible.
    let file = dir.path().join("base.img");
    let bytes: Vec<u8> = (0..5 * 1024 * 1024 + 12_345)
        .map(|_| fastrand::u8(..))
        .collect();
    std::fs::write(&file, &bytes)?;
    let sha = sha256sum(&file)?;
    let file = file.to_str().unwrap_or_default().to_string();

    // n3 is down while the image is imported; it catches up when it is back.
    cluster.kill(2);
    let (code, out) = paddock(&cluster, 1, &["image", "import", "base", &file])?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&sha), "the import prints the hash: {out}");
    let mut client = cluster.client(WAIT)?;
    until!("n1 and n2 hold the image", {
        let images = client.images(false).await?;
        Ok(images.len() == 1 && images[0].holders == ["n1", "n2"])
    });
    cluster.start(2)?;
    until!("n3 fetched the image", {
        Ok(client.images(false).await?[0].holders.len() == 3)
    });
    for i in 0..3 {
        assert_eq!(
            std::fs::read(copy_of(&cluster, i, &sha))?,
            bytes,
            "n{}",
            i + 1
        );
    }
    let (code, out) = paddock(&cluster, 0, &["image", "list"])?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3/3") && out.contains(&sha[..12]), "{out}");

    // Other bytes under the same name are refused; nothing is left behind for them.
    let other = dir.path().join("other.img");
    std::fs::write(&other, b"other bytes")?;
    let (code, out) = paddock(
        &cluster,
        0,
        &[
            "image",
            "import",
            "base",
            other.to_str().unwrap_or_default(),
        ],
    )?;
    assert_eq!(code, 5, "{out}");
    let other_sha = sha256sum(&other)?;
    assert!(!copy_of(&cluster, 0, &other_sha).exists());

    // VMs name images; an unknown name is refused with what to do.
    let create = |name: &'static str, image: &'static str| {
        [
            "vm", "create", name, "--cpus", "1", "--memory", "64MiB", "--disk", "1GiB", "--image",
            image,
        ]
    };
    let (code, out) = paddock(&cluster, 0, &create("bad", "nosuch"))?;
    assert_eq!(code, 6, "{out}");
    assert!(out.contains("paddock image import nosuch"), "{out}");
    let (code, out) = paddock(&cluster, 0, &create("web", "base"))?;
    assert_eq!(code, 0, "{out}");
    until!("web runs", {
        Ok(paddock_tests::vm_summary(&mut client, "web").await?.state == "running")
    });

    // In use: kept. Unused: deleted, and every node removes its copy.
    let (code, out) = paddock(&cluster, 2, &["image", "delete", "base"])?;
    assert_eq!(code, 6, "{out}");
    assert!(out.contains("web"), "{out}");
    client.vm_delete("web").await?;
    let (code, out) = paddock(&cluster, 2, &["image", "delete", "base"])?;
    assert_eq!(code, 0, "{out}");
    until!("every copy removed", {
        Ok((0..3).all(|i| !copy_of(&cluster, i, &sha).exists()))
    });
    assert!(client.images(false).await?.is_empty());
    Ok(())
}
