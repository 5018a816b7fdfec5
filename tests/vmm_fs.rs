//! One real boot with two virtio-fs shares (`kvmbox vm boot --share`): a read-write one and a
//! read-only one. The busybox init mounts both (`mount -t virtiofs TAG DIR`), reads a host file,
//! writes a new file and a directory, lists the share, follows a symlink that points outside
//! the share, tries to write to the read-only share, and reports on the serial console; the
//! host checks the output and the files the guest left behind. A package manager runs on the
//! share too: busybox `dpkg` chrooted into it installs and purges a small .deb (mkdir, chown,
//! chmod, create, write, symlink, rename of its status file, unlink, rmdir).

mod vm_common;

use std::process::Command;

use kvmbox::vmm::initramfs::Initramfs;

const HOST_TEXT: &str = "hello from the host over virtio-fs";
const GUEST_TEXT: &str = "written by the guest";
const SECRET: &str = "HOST-SECRET-OUTSIDE-THE-SHARE";

fn init_script() -> String {
    format!(
        "#!/bin/busybox sh\n\
         bb=/bin/busybox\n\
         $bb mount -t devtmpfs dev /dev\n\
         $bb mount -t sysfs sys /sys\n\
         ids=; for d in /sys/bus/virtio/devices/*; do read id < $d/device; ids=\"$ids $id\"; done\n\
         echo VIRTIO-IDS $ids\n\
         $bb mount -t virtiofs hostshare /mnt && echo MOUNT-OK\n\
         read line < /mnt/hello.txt; echo \"READ $line\"\n\
         echo '{GUEST_TEXT}' > /mnt/from-guest.txt && echo WRITE-OK\n\
         $bb mkdir /mnt/guest-dir && echo MKDIR-OK\n\
         echo LIST-BEGIN; $bb ls /mnt; echo LIST-END\n\
         echo \"ESCAPE $($bb cat /mnt/escape 2>&1)\"\n\
         $bb chroot /mnt /bin/busybox dpkg -i /hello.deb && echo DPKG-INSTALL-OK\n\
         read line < /mnt/usr/share/hello/link; echo \"DPKG-READ $line\"\n\
         while read l; do case \"$l\" in Status:*) echo \"DPKG-STATUS $l\";; esac; done < /mnt/var/lib/dpkg/status\n\
         $bb chroot /mnt /bin/busybox dpkg -P kvmbox-hello && echo DPKG-PURGE-OK\n\
         $bb mount -t virtiofs roshare /ro && echo RO-MOUNT-OK\n\
         read line < /ro/ro.txt; echo \"RO-READ $line\"\n\
         echo \"RO-WRITE $( (echo x > /ro/nope.txt) 2>&1)\"\n\
         $bb umount /mnt && echo UMOUNT-OK\n\
         echo FS-DONE\n\
         $bb poweroff -f\n"
    )
}

fn initramfs() -> Initramfs {
    let mut fs = vm_common::busybox_initramfs(&init_script());
    fs.dir("mnt").dir("ro");
    fs
}

#[test]
fn guest_mounts_reads_and_writes_shared_directories() {
    let Some(kernel) = vm_common::guest_kernel() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initramfs.cpio");
    std::fs::write(&initrd, initramfs().to_bytes()).unwrap();
    // The read-write share, with a symlink pointing at a file outside it.
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("hello.txt"), format!("{HOST_TEXT}\n")).unwrap();
    std::os::unix::fs::symlink("../secret", share.join("escape")).unwrap();
    package_root(&share, dir.path());
    // The read-only share.
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::write(ro.join("ro.txt"), "read-only content\n").unwrap();
    let stdout_path = dir.path().join("stdout");

    let timeout = vm_common::boot_timeout(180);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvmbox"));
    cmd.args(["vm", "boot", "--kernel"])
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .arg("--share")
        .arg(format!("hostshare={}", share.display()))
        .arg("--share")
        .arg(format!("roshare={},ro", ro.display()));
    let vm_common::BootRun { status, out, .. } =
        vm_common::run_boot(&mut cmd, &stdout_path, timeout);
    let status = status.unwrap_or_else(|| panic!("VM did not power off within {timeout:?}"));
    assert_eq!(status.code(), Some(0), "kvmbox failed");
    assert!(out.contains("FS-DONE"), "init did not finish");

    // Two virtio-fs devices (id 26) on the bus.
    let ids = out
        .lines()
        .find_map(|l| l.strip_prefix("VIRTIO-IDS "))
        .expect("no VIRTIO-IDS line");
    assert_eq!(ids.matches("0x001a").count(), 2, "{ids:?}");
    assert!(out.contains("MOUNT-OK"), "mount failed");
    // The guest read the host file.
    assert!(out.contains(&format!("READ {HOST_TEXT}")), "read");
    // The guest's file and directory are on the host.
    assert!(out.contains("WRITE-OK") && out.contains("MKDIR-OK"));
    assert_eq!(
        std::fs::read_to_string(share.join("from-guest.txt")).unwrap(),
        format!("{GUEST_TEXT}\n")
    );
    assert!(share.join("guest-dir").is_dir());
    // The listing shows the host's and the guest's entries.
    let list: Vec<&str> = out
        .split("LIST-BEGIN")
        .nth(1)
        .and_then(|l| l.split("LIST-END").next())
        .expect("no listing")
        .split_whitespace()
        .collect();
    for name in [
        "hello.txt",
        "from-guest.txt",
        "guest-dir",
        "escape",
        "hello.deb",
    ] {
        assert!(list.contains(&name), "{name} missing from {list:?}");
    }
    // The symlink resolves inside the guest (to /secret, absent), never to the host's file.
    assert!(
        !out.contains(SECRET),
        "the guest read a file outside the share"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("ESCAPE ") && l.contains("No such file")),
        "escape line"
    );
    // The read-only share reads but refuses writes.
    assert!(out.contains("RO-MOUNT-OK"));
    assert!(out.contains("RO-READ read-only content"));
    assert!(
        out.lines()
            .any(|l| l.starts_with("RO-WRITE ") && l.contains("Read-only file system")),
        "write to the read-only share was not refused with EROFS"
    );
    assert!(!ro.join("nope.txt").exists());
    assert!(out.contains("UMOUNT-OK"));

    // The package manager: installed (its file read through its symlink, its status recorded
    // through a rename), then purged, all on the share; the host sees the end state.
    assert!(out.contains("DPKG-INSTALL-OK"), "dpkg -i failed");
    assert!(
        out.contains("DPKG-READ installed by dpkg"),
        "installed file"
    );
    assert!(out.contains("DPKG-STATUS Status: install ok installed"));
    assert!(out.contains("DPKG-PURGE-OK"), "dpkg -P failed");
    let status = std::fs::read_to_string(share.join("var/lib/dpkg/status")).unwrap();
    assert!(
        status.contains("Status: purge ok not-installed"),
        "{status}"
    );
    assert!(
        !share.join("usr").exists(),
        "purge left the package's files"
    );
    assert!(!share.join("var/lib/dpkg/info/kvmbox-hello.list").exists());
}

/// Make `share` a root busybox `dpkg` can manage: /bin/busybox, an empty /var/lib/dpkg, and
/// /hello.deb (built with the host's dpkg-deb, gzip members as busybox reads them) holding
/// /usr/share/hello/greeting and a symlink to it.
fn package_root(share: &std::path::Path, scratch: &std::path::Path) {
    std::fs::create_dir_all(share.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", share.join("bin/busybox")).unwrap();
    std::fs::create_dir_all(share.join("var/lib/dpkg/info")).unwrap();
    std::fs::write(share.join("var/lib/dpkg/status"), "").unwrap();
    let pkg = scratch.join("pkg");
    std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(pkg.join("usr/share/hello")).unwrap();
    std::fs::write(
        pkg.join("DEBIAN/control"),
        "Package: kvmbox-hello\nVersion: 1.0\nArchitecture: all\n\
         Maintainer: kvmbox tests <tests@kvmbox.invalid>\n\
         Description: a file installed by busybox dpkg on virtio-fs\n",
    )
    .unwrap();
    std::fs::write(pkg.join("usr/share/hello/greeting"), "installed by dpkg\n").unwrap();
    std::os::unix::fs::symlink("greeting", pkg.join("usr/share/hello/link")).unwrap();
    let built = Command::new("dpkg-deb")
        .args(["-Zgzip", "--root-owner-group", "--build"])
        .arg(&pkg)
        .arg(share.join("hello.deb"))
        .output()
        .expect("dpkg-deb (Debian's dpkg) builds the test package");
    assert!(built.status.success(), "dpkg-deb: {built:?}");
}

#[test]
fn bad_share_option_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    for (spec, needle) in [
        ("no-equals-sign".to_string(), "TAG=PATH"),
        (format!("t={},rx", dir.path().display()), "unknown option"),
        ("t=/nonexistent/dir".to_string(), "/nonexistent/dir"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kvmbox"))
            .args(["vm", "boot", "--kernel", "/nonexistent/vmlinux", "--share"])
            .arg(&spec)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{spec} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{spec}: {err}");
    }
}
