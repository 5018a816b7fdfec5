//! A busybox OCI image built locally (no registry here): an OCI image-layout tar with one
//! gzip layer holding busybox-static and its applet links, for `ctr image import`.

#![allow(dead_code)] // used by some test binaries only

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::json;

/// The image name `io.containerd.image.name` gives the imported image.
pub const IMAGE_NAME: &str = "docker.io/library/kvmbox-busybox:e2e";

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}

/// Store `path` as a blob of the layout; returns (digest, size).
fn add_blob(layout: &Path, path: &Path) -> (String, u64) {
    let hex = sha256(path);
    fs::copy(path, layout.join("blobs/sha256").join(&hex)).expect("copy blob");
    let size = fs::metadata(path).expect("blob size").len();
    (format!("sha256:{hex}"), size)
}

/// Build the image tar at `work/image.tar` (scratch files go under `work`) and return its path.
pub fn build_busybox_image(work: &Path) -> std::path::PathBuf {
    build_busybox_image_as(work, IMAGE_NAME, &["sh"])
}

/// Build the busybox image named `name` whose config's `Cmd` is `cmd` (e.g. a long-running
/// command for a CRI pod sandbox image) at `work/image.tar`; scratch files go under `work`.
pub fn build_busybox_image_as(work: &Path, name: &str, cmd: &[&str]) -> std::path::PathBuf {
    let rootfs = work.join("image-rootfs");
    for dir in ["bin", "proc", "dev", "sys", "tmp", "etc", "root"] {
        fs::create_dir_all(rootfs.join(dir)).expect("create rootfs dir");
    }
    fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .expect("copy /bin/busybox (apt-get install busybox-static)");
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if !applet.is_empty() && applet != "busybox" {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .expect("applet link");
        }
    }
    let layout = work.join("image-layout");
    fs::create_dir_all(layout.join("blobs/sha256")).expect("create layout");

    let layer_tar = work.join("layer.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["--numeric-owner", "--owner=0", "--group=0", "-cf"])
        .arg(&layer_tar)
        .arg("."));
    let diff_id = format!("sha256:{}", sha256(&layer_tar));
    run(Command::new("gzip")
        .args(["-n", "-k", "-f"])
        .arg(&layer_tar));
    let (layer_digest, layer_size) = add_blob(&layout, &work.join("layer.tar.gz"));

    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": cmd, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let config_path = work.join("config.json");
    fs::write(&config_path, config.to_string()).expect("write image config");
    let (config_digest, config_size) = add_blob(&layout, &config_path);

    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": layer_size}],
    });
    let manifest_path = work.join("manifest.json");
    fs::write(&manifest_path, manifest.to_string()).expect("write manifest");
    let (manifest_digest, manifest_size) = add_blob(&layout, &manifest_path);

    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name,
                            "org.opencontainers.image.ref.name": name.rsplit(':').next()},
        }],
    });
    fs::write(layout.join("index.json"), index.to_string()).expect("write index.json");
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("write oci-layout");
    let image = work.join("image.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&image)
        .arg("."));
    image
}
