//! One real boot with virtio-net on a tap: the test creates the tap (`ip tuntap add`, root
//! needed) with a host address, the busybox init configures eth0 and talks TCP to the host
//! both ways — a request line and a 64 KiB answer from the host, then 64 KiB from the guest —
//! and the tap is deleted afterwards, also when the test fails.

mod vm_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

const GUEST_MAC: &str = "02:6b:76:00:00:2a";
const BULK: usize = 64 * 1024;

/// The host's answer to the guest's request line: a line, then a pattern.
fn host_reply() -> Vec<u8> {
    let mut r = b"pong-from-host\n".to_vec();
    r.extend((0..BULK).map(|i| (i * 31 + 7) as u8));
    r
}

fn init_script(host_ip: &str, guest_ip: &str) -> String {
    format!(
        "#!/bin/busybox sh\n\
         bb=/bin/busybox\n\
         $bb mount -t devtmpfs dev /dev\n\
         $bb mount -t sysfs sys /sys\n\
         $bb mount -t proc proc /proc\n\
         ids=; for d in /sys/bus/virtio/devices/*; do read id < $d/device; ids=\"$ids $id\"; done\n\
         echo VIRTIO-IDS $ids\n\
         read mac < /sys/class/net/eth0/address; echo ETH0-MAC $mac\n\
         $bb ip addr add {guest_ip}/24 dev eth0\n\
         $bb ip link set eth0 up\n\
         echo T-UP $($bb cut -d' ' -f1 /proc/uptime)\n\
         echo ping-from-guest | $bb nc -w 300 {host_ip} 7001 > /reply\n\
         read first < /reply; echo REPLY-FIRST $first\n\
         echo -n 'REPLY-MD5 '; $bb md5sum /reply\n\
         echo T-REPLY $($bb cut -d' ' -f1 /proc/uptime)\n\
         $bb head -c {BULK} /bin/busybox | $bb nc -w 300 {host_ip} 7002 && echo BULK-SENT\n\
         echo T-BULK $($bb cut -d' ' -f1 /proc/uptime)\n\
         echo NET-DONE\n\
         $bb poweroff -f\n"
    )
}

#[test]
fn guest_talks_tcp_with_the_host_over_a_tap() {
    let Some(kernel) = vm_common::guest_kernel() else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: creating a tap interface needs root");
        return;
    }
    let pid = std::process::id();
    let tap_name = format!("kvmbt{pid}");
    let subnet = 20 + pid % 200;
    let (host_ip, guest_ip) = (format!("10.254.{subnet}.1"), format!("10.254.{subnet}.2"));
    let tap = vm_common::Tap::create(&tap_name, &format!("{host_ip}/24"));

    // Host side: 7001 reads the guest's line and answers; 7002 takes the guest's bulk data.
    let (tx, rx) = mpsc::channel::<(u16, Vec<u8>)>();
    for port in [7001u16, 7002] {
        let listener = TcpListener::bind((host_ip.as_str(), port)).unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
            let mut got = Vec::new();
            if port == 7001 {
                let mut line = String::new();
                BufReader::new(&mut s).read_line(&mut line).unwrap();
                got = line.into_bytes();
                s.write_all(&host_reply()).unwrap();
            } else {
                s.read_to_end(&mut got).unwrap();
            }
            let _ = tx.send((port, got));
        });
    }

    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initramfs.cpio");
    let fs = vm_common::busybox_initramfs(&init_script(&host_ip, &guest_ip));
    std::fs::write(&initrd, fs.to_bytes()).unwrap();
    let timeout = vm_common::boot_timeout(300);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvmbox"));
    cmd.args(["vm", "boot", "--kernel"])
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .arg("--net")
        .arg(format!("tap={tap_name},mac={GUEST_MAC}"));
    let run = vm_common::run_boot(&mut cmd, &dir.path().join("stdout"), timeout);
    let status = run
        .status
        .unwrap_or_else(|| panic!("VM did not power off within {timeout:?}"));
    assert_eq!(status.code(), Some(0), "kvmbox failed: {}", run.stderr);
    let out = run.out;
    assert!(out.contains("NET-DONE"), "init did not finish");

    let ids = out
        .lines()
        .find_map(|l| l.strip_prefix("VIRTIO-IDS "))
        .expect("no VIRTIO-IDS line");
    assert!(ids.contains("0x0001"), "net device missing from {ids:?}");
    assert!(out.contains(&format!("ETH0-MAC {GUEST_MAC}")), "MAC");

    let mut got = std::collections::HashMap::new();
    while let Ok((port, data)) = rx.recv_timeout(Duration::from_secs(5)) {
        got.insert(port, data);
        if got.len() == 2 {
            break;
        }
    }
    // Guest → host line, host → guest answer (checked in the guest by md5).
    assert_eq!(
        got.get(&7001).map(|v| &v[..]),
        Some(&b"ping-from-guest\n"[..])
    );
    assert!(out.contains("REPLY-FIRST pong-from-host"), "reply line");
    let md5_line = out.lines().find(|l| l.starts_with("REPLY-MD5 ")).unwrap();
    let want = vm_common::md5_hex(&host_reply(), dir.path());
    assert!(md5_line.contains(&want), "{md5_line} != {want}");
    // Guest → host bulk.
    assert!(out.contains("BULK-SENT"));
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let sent = got.get(&7002).expect("no bulk data from the guest");
    assert_eq!(sent.len(), BULK.min(busybox.len()));
    assert!(sent[..] == busybox[..sent.len()], "bulk data differs");

    drop(tap);
    assert!(!vm_common::interface_exists(&tap_name), "tap left behind");
}

#[test]
fn bad_net_options_are_one_clear_error_and_create_nothing() {
    for (spec, word) in [
        ("tap=t0,mac=01:00:00:00:00:01", "multicast"),
        ("tap=a/b", "invalid interface name"),
        ("tap0", "unexpected"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kvmbox"))
            .args([
                "vm",
                "boot",
                "--kernel",
                "/nonexistent/vmlinux",
                "--net",
                spec,
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains(word), "{spec}: {stderr}");
    }
    assert!(!vm_common::interface_exists("t0"));
}

#[test]
fn a_vmm_created_tap_disappears_with_the_vmm() {
    use kvmbox::vmm::devices::virtio::net::Net;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: creating a tap interface needs root");
        return;
    }
    let name = format!("kvmbx{}", std::process::id());
    assert!(!vm_common::interface_exists(&name));
    let dev = Net::open_tap(&name, [2, 0, 0, 0, 0, 1]).unwrap();
    assert!(vm_common::interface_exists(&name));
    // A second VM cannot take the same tap while the first holds it (no IFF_MULTI_QUEUE).
    let second = Net::open_tap(&name, [2, 0, 0, 0, 0, 2]);
    assert!(second.is_err());
    let msg = second.err().unwrap().to_string();
    assert!(msg.contains(&name) && msg.contains("TUNSETIFF"), "{msg}");
    drop(dev);
    assert!(!vm_common::interface_exists(&name), "tap left behind");
}
