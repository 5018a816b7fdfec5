//! virtio-fs vs virtio-blk in one guest boot: sequential read of a 16 MiB file (cold and warm
//! guest page cache), a metadata run (create + syncfs, then stat, of 200 small files) and the
//! untar of a busybox rootfs (busybox + one symlink per applet + the usual directories), on a
//! virtio-fs share and on an ext4 image (`mkfs.ext4 -d`) holding the same files.
//!
//! `cargo build --release && cargo run --release --example fs_bench -- --kernel K
//!  [--kvmbox target/release/kvmbox] [--busybox /bin/busybox] [--memory 256] [--big-mib 16]`
//!
//! The guest helper is `tests/fixtures/fs_bench_guest.c` (compiled here with gcc -static).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use kvmbox::vmm::initramfs::Initramfs;

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("{:?}: {e}", cmd.get_program()));
    assert!(status.success(), "{cmd:?} failed");
}

/// A busybox rootfs as a tar file: the binary, one symlink per applet, the usual directories.
fn busybox_rootfs_tar(busybox: &Path, root: &Path, tarball: &Path) {
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys", "tmp", "var",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let list = Command::new(busybox).arg("--list-full").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = root.join(applet);
        if applet == "bin/busybox" || link.exists() {
            continue;
        }
        let depth = applet.matches('/').count();
        let target = format!("{}bin/busybox", "../".repeat(depth));
        std::os::unix::fs::symlink(target, link).unwrap();
    }
    run(Command::new("tar")
        .arg("-cf")
        .arg(tarball)
        .arg("-C")
        .arg(root)
        .arg("."));
}

fn init_script() -> &'static str {
    "#!/bin/busybox sh\n\
     bb=/bin/busybox\n\
     $bb mount -t devtmpfs dev /dev\n\
     $bb mount -t virtiofs bench /fs || echo BENCH-FAILED mount virtiofs\n\
     $bb mount -t ext4 /dev/vda /blk || echo BENCH-FAILED mount ext4\n\
     /bin/fs_bench_guest virtio-fs /fs /fs/rootfs.tar || echo BENCH-FAILED virtio-fs\n\
     /bin/fs_bench_guest virtio-blk /blk /blk/rootfs.tar || echo BENCH-FAILED virtio-blk\n\
     $bb umount /blk\n\
     $bb umount /fs\n\
     echo BENCH-DONE\n\
     $bb poweroff -f\n"
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut kernel = std::env::var_os("KVMBOX_KERNEL").map(PathBuf::from);
    let mut busybox = PathBuf::from("/bin/busybox");
    let mut memory = 256u32;
    let mut big_mib = 16usize;
    let mut kvmbox = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("kvmbox")))
        .unwrap_or_else(|| PathBuf::from("target/release/kvmbox"));
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(val())),
            "--busybox" => busybox = PathBuf::from(val()),
            "--memory" => memory = val().parse().expect("--memory MiB"),
            "--kvmbox" => kvmbox = PathBuf::from(val()),
            "--big-mib" => big_mib = val().parse().expect("--big-mib N"),
            other => panic!("unknown argument {other}"),
        }
    }
    let kernel = kernel.expect("--kernel K (or KVMBOX_KERNEL) is required");
    let dir = tempfile::tempdir().expect("tempdir");
    let big = pseudo_random(big_mib << 20);

    let tarball = dir.path().join("rootfs.tar");
    busybox_rootfs_tar(&busybox, &dir.path().join("rootfs"), &tarball);

    // The virtio-fs share and the ext4 image get the same files.
    let share = dir.path().join("share");
    let image_src = dir.path().join("image-src");
    for d in [&share, &image_src] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("big"), &big).unwrap();
        std::fs::copy(&tarball, d.join("rootfs.tar")).unwrap();
    }
    let image = dir.path().join("ext4.img");
    run(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            "-d",
        ])
        .arg(&image_src)
        .arg(&image)
        .arg(format!("{}M", big_mib * 2 + 64)));

    let helper = dir.path().join("fs_bench_guest");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fs_bench_guest.c");
    run(Command::new("gcc")
        .args(["-static", "-O2", "-s", "-o"])
        .arg(&helper)
        .arg(&src));

    let mut fs = Initramfs::busybox(&busybox, init_script()).expect("busybox");
    fs.dir("fs").dir("blk");
    fs.host_file("bin/fs_bench_guest", &helper).unwrap();
    let initrd = dir.path().join("initramfs.cpio");
    std::fs::write(&initrd, fs.to_bytes()).unwrap();

    eprintln!(
        "fs_bench: kvmbox {}, kernel {}, {memory} MiB guest",
        kvmbox.display(),
        kernel.display()
    );
    let start = Instant::now();
    let out = Command::new(&kvmbox)
        .args(["vm", "boot", "--memory", &memory.to_string(), "--kernel"])
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .arg("--disk")
        .arg(&image)
        .arg("--share")
        .arg(format!("bench={}", share.display()))
        .output()
        .expect("run kvmbox");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("BENCH")).collect();
    if !out.status.success() || !stdout.contains("BENCH-DONE") || stdout.contains("BENCH-FAILED") {
        eprintln!(
            "{stdout}\n{}\nfs_bench: the guest run failed",
            String::from_utf8_lossy(&out.stderr)
        );
        std::process::exit(1);
    }
    for l in lines {
        if l != "BENCH-DONE" {
            println!("{}", l.trim_start_matches("BENCH "));
        }
    }
    println!(
        "(whole boot + benchmark: {:.1} s)",
        start.elapsed().as_secs_f64()
    );
}
