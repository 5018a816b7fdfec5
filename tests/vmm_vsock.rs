//! One real boot with a virtio-vsock device: a static guest program (tests/fixtures/
//! vsock_guest.c, compiled with `gcc -static -Os` here) talks to this test over vsock both ways:
//! guest → host through `<uds>_6000`, host → guest through `CONNECT 5000` on `<uds>`.

mod vm_common;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use kvmbox::vmm::config::{CpuProfile, SerialOutput, VmConfig, VsockConfig, KVM_PVM_SYSFS};
use kvmbox::vmm::exit::VmExit;
use kvmbox::vmm::initramfs::Initramfs;

/// Compile the guest helper statically.
fn build_guest_helper(out: &Path) {
    vm_common::compile_static_fixture("vsock_guest.c", "-Os", out);
}

fn initramfs(helper: &Path) -> Initramfs {
    let script = "#!/bin/busybox sh\n\
         /bin/busybox mount -t devtmpfs dev /dev\n\
         /bin/vsock_guest 5000 6000 'hello from guest' || echo GUEST FAILED\n\
         /bin/busybox poweroff -f\n";
    let mut fs = vm_common::busybox_initramfs(script);
    fs.host_file("bin/vsock_guest", helper).unwrap();
    fs
}

/// Read one line from a stream with a read timeout.
fn read_line(s: &mut UnixStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b)? == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Accept one connection, giving up at `deadline` or when `vm_done` says the VM stopped.
fn accept_until(
    l: &UnixListener,
    deadline: Instant,
    vm_done: impl Fn() -> bool,
) -> Result<UnixStream, String> {
    l.set_nonblocking(true).unwrap();
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                return Ok(s);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("accept: {e}")),
        }
        if vm_done() {
            return Err("the VM stopped before the guest connected".into());
        }
        if Instant::now() > deadline {
            return Err("timed out waiting for the guest to connect".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn guest_and_host_exchange_data_over_vsock_both_ways() {
    let Some(kernel) = vm_common::guest_kernel() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let helper = dir.path().join("vsock_guest");
    build_guest_helper(&helper);
    let initrd = dir.path().join("initramfs.cpio");
    std::fs::write(&initrd, initramfs(&helper).to_bytes()).unwrap();
    let uds = dir.path().join("v.sock");
    let serial_log = dir.path().join("serial.log");
    let guest_listener = UnixListener::bind(format!("{}_6000", uds.display())).unwrap();

    let mut config = VmConfig::new(&kernel);
    config.initrd = Some(initrd);
    config.serial = SerialOutput::File(serial_log.clone());
    config.cpu_profile = CpuProfile::choose(None, Path::new(KVM_PVM_SYSFS)).profile;
    config.vsock = Some(VsockConfig {
        guest_cid: 3,
        uds_path: uds.clone(),
    });
    let start = Instant::now();
    let deadline = start + vm_common::boot_timeout(120);
    let vm = vm_common::spawn_vm(config);
    let serial = || std::fs::read_to_string(&serial_log).unwrap_or_default();

    // Guest → host: the guest connects to host port 6000 and says hello.
    let mut from_guest = accept_until(&guest_listener, deadline, || vm.is_finished())
        .unwrap_or_else(|e| panic!("{e}; serial:\n{}", serial()));
    let t_connect = start.elapsed();
    let hello = read_line(&mut from_guest).unwrap();
    assert_eq!(hello, "hello from guest\n");
    from_guest.write_all(b"hello from host\n").unwrap();
    drop(from_guest);

    // Host → guest: the guest is now listening on port 5000.
    let mut to_guest = UnixStream::connect(&uds).unwrap();
    to_guest
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    to_guest.write_all(b"CONNECT 5000\n").unwrap();
    let ok = read_line(&mut to_guest).unwrap();
    assert!(
        ok.starts_with("OK ") && ok.trim_end()[3..].parse::<u32>().is_ok(),
        "{ok:?}; serial:\n{}",
        serial()
    );
    to_guest.write_all(b"ping from host\n").unwrap();
    let echo = read_line(&mut to_guest).unwrap();
    assert_eq!(echo, "echo: ping from host\n", "serial:\n{}", serial());

    // The guest powers off after serving.
    while !vm.is_finished() {
        assert!(
            Instant::now() < deadline,
            "VM did not power off; serial:\n{}",
            serial()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let exit = vm.join().unwrap().unwrap();
    let log = serial();
    assert!(
        matches!(exit, VmExit::PowerOff(_)),
        "{exit:?}; serial:\n{log}"
    );
    assert!(log.contains("GUEST GOT: hello from host"), "serial:\n{log}");
    assert!(
        log.contains("GUEST SERVED: ping from host"),
        "serial:\n{log}"
    );
    assert!(!log.contains("GUEST FAILED"), "serial:\n{log}");
    assert!(
        !uds.exists(),
        "the VM's vsock socket is removed when the VM stops"
    );
    eprintln!(
        "vsock boot: guest connected after {:.1} s, whole run {:.1} s",
        t_connect.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}
