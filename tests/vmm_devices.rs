//! One real boot with every kind of kvmbox virtio device: virtio-blk on a host file with a
//! known pattern, virtio-rng, the virtio console, vsock, virtio-fs and (as root) virtio-net on a
//! tap the VMM creates. The busybox init lists /sys/bus/virtio/devices, reads /dev/vda, writes
//! to it, reads /dev/hwrng, writes to /dev/hvc0 and powers off; the host then checks the
//! printed results and the image file.

mod vm_common;

use std::process::{Command, Stdio};
use std::time::Instant;

use kvmbox::vmm::initramfs::Initramfs;

const DISK_SECTORS: usize = 128;
const DISK_BYTES: usize = DISK_SECTORS * 512;
/// Written by the guest (with a newline) at byte offset 3 * 512.
const GUEST_WRITE: &str = "written-by-the-guest";

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + 5) as u8).collect()
}

/// The guest is slow here (every fork/exec goes through the emulated kernel): few processes,
/// shell builtins where possible.
fn init_script() -> String {
    format!(
        "#!/bin/busybox sh\n\
         bb=/bin/busybox\n\
         $bb mount -t devtmpfs dev /dev\n\
         $bb mount -t sysfs sys /sys\n\
         ids=; for d in /sys/bus/virtio/devices/*; do read id < $d/device; ids=\"$ids $id\"; done\n\
         echo VIRTIO-IDS $ids\n\
         read size < /sys/block/vda/size; echo VDA-SIZE $size\n\
         echo -n 'VDA-MD5 '; $bb md5sum /dev/vda\n\
         $bb dd of=/dev/vda bs=512 seek=3 conv=sync,fsync 2>/dev/null <<EOF && echo VDA-WRITE-OK\n\
         {GUEST_WRITE}\n\
         EOF\n\
         echo HWRNG-BEGIN; $bb od -An -tx1 -N32 /dev/hwrng; echo HWRNG-END\n\
         read cur < /sys/class/misc/hw_random/rng_current; echo HWRNG-CURRENT $cur\n\
         echo hvc0-says-hello > /dev/hvc0\n\
         echo DEVICES-DONE\n\
         $bb poweroff -f\n"
    )
}

fn initramfs() -> Initramfs {
    vm_common::busybox_initramfs(&init_script())
}

#[test]
fn guest_sees_every_device_and_uses_blk_rng_and_console() {
    let Some(kernel) = vm_common::guest_kernel() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initramfs.cpio");
    std::fs::write(&initrd, initramfs().to_bytes()).unwrap();
    let disk = dir.path().join("disk.img");
    let original = pattern(DISK_BYTES);
    std::fs::write(&disk, &original).unwrap();
    let expected_md5 = vm_common::md5_hex(&original, dir.path());
    let stdout_path = dir.path().join("stdout");

    let timeout = vm_common::boot_timeout(120);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvmbox"));
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    cmd.args(["vm", "boot", "--rng", "--virtio-console", "--kernel"])
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .arg("--disk")
        .arg(&disk)
        .arg("--vsock")
        .arg(format!("3,{}", dir.path().join("vsock.sock").display()))
        .arg("--share")
        .arg(format!("devshare={}", share.display()));
    // virtio-net needs a tap: as root the VMM creates one that disappears with it.
    // SAFETY: geteuid has no preconditions.
    let with_net = unsafe { libc::geteuid() } == 0;
    let tap = format!("kvmbd{}", std::process::id());
    if with_net {
        cmd.arg("--net").arg(format!("tap={tap}"));
    } else {
        eprintln!("not root: no virtio-net device in this boot");
    }
    let vm_common::BootRun { status, out, .. } =
        vm_common::run_boot(&mut cmd, &stdout_path, timeout);
    let status = status.unwrap_or_else(|| panic!("VM did not power off within {timeout:?}"));
    assert_eq!(status.code(), Some(0), "kvmbox failed");
    assert!(out.contains("DEVICES-DONE"), "init did not finish");

    // Every device is on the virtio bus: net (1), block (2), console (3), rng (4), vsock (19)
    // and fs (26); the vsock and fs data paths have their own boots (vmm_vsock, vmm_fs).
    let ids = out
        .lines()
        .find_map(|l| l.strip_prefix("VIRTIO-IDS "))
        .expect("no VIRTIO-IDS line");
    let mut want = vec!["0x0002", "0x0003", "0x0004", "0x0013", "0x001a"];
    if with_net {
        want.push("0x0001");
        assert!(
            !vm_common::interface_exists(&tap),
            "the VMM's tap outlived it"
        );
    }
    for id in want {
        assert!(ids.contains(id), "device {id} missing from {ids:?}");
    }
    // The guest read the host's pattern.
    let md5_line = out.lines().find(|l| l.starts_with("VDA-MD5 ")).unwrap();
    assert!(
        md5_line.contains(&expected_md5),
        "{md5_line} != {expected_md5}"
    );
    assert!(
        out.contains(&format!("VDA-SIZE {DISK_SECTORS}")),
        "capacity"
    );
    // The guest's write reached the file, padded to a sector, and nothing else changed.
    assert!(out.contains("VDA-WRITE-OK"));
    let after = std::fs::read(&disk).unwrap();
    assert_eq!(after.len(), original.len());
    let at = 3 * 512;
    let written = format!("{GUEST_WRITE}\n");
    assert_eq!(&after[at..at + written.len()], written.as_bytes());
    assert!(after[at + written.len()..at + 512].iter().all(|&b| b == 0));
    assert_eq!(&after[..at], &original[..at]);
    assert_eq!(&after[at + 512..], &original[at + 512..]);
    // 32 bytes from /dev/hwrng, served by virtio-rng.
    let rng: String = out
        .split("HWRNG-BEGIN")
        .nth(1)
        .and_then(|r| r.split("HWRNG-END").next())
        .expect("no HWRNG block")
        .split_whitespace()
        .collect();
    assert_eq!(rng.len(), 64, "{rng}");
    assert_ne!(rng, "0".repeat(64));
    assert!(out.contains("HWRNG-CURRENT virtio_rng"), "rng_current");
    // The virtio console's output reached stdout.
    assert!(out.contains("hvc0-says-hello"));
}

#[test]
fn missing_disk_image_fails_the_build_naming_the_file() {
    use kvmbox::vmm::builder::VmBuilder;
    use kvmbox::vmm::config::{DiskConfig, VmConfig};
    use kvmbox::vmm::timings::BootTimer;

    let mut config = VmConfig::new("/nonexistent/vmlinux");
    config.disks.push(DiskConfig {
        path: "/nonexistent/disk.img".into(),
        read_only: false,
    });
    let err = VmBuilder::new(config, BootTimer::new(Instant::now()))
        .build()
        .err()
        .expect("build must fail");
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/disk.img"), "{msg}");
    assert!(msg.contains("virtio-blk"), "{msg}");
}

#[test]
fn bad_disk_option_is_one_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_kvmbox"))
        .args([
            "vm",
            "boot",
            "--kernel",
            "/nonexistent/vmlinux",
            "--disk",
            "/tmp/x.img,bogus",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("bogus"), "{stderr}");
}
