//! vsock throughput guest ↔ host through kvmbox's hybrid Unix-socket backend: one boot, the
//! guest writes N MiB to a host listener (`<uds>_5001`), then the host connects through the VM
//! socket (`CONNECT 5002`) and writes N MiB to the guest. Both sides time their part (guest
//! clock and host clock).
//!
//! `cargo build --release --bin kvmbox --example vsock_bench &&
//!  target/release/examples/vsock_bench --kernel K [--kvmbox target/release/kvmbox] [--mib 16]`
//!
//! The guest helper is `tests/fixtures/vsock_bench_guest.c` (compiled here with gcc -static).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvmbox::vmm::initramfs::Initramfs;

const GUEST_TO_HOST_PORT: u32 = 5001;
const HOST_TO_GUEST_PORT: u32 = 5002;

fn init_script(mib: usize) -> String {
    format!(
        "#!/bin/busybox sh\n\
         bb=/bin/busybox\n\
         $bb mount -t devtmpfs dev /dev\n\
         /bin/vsock_bench_guest {GUEST_TO_HOST_PORT} {HOST_TO_GUEST_PORT} {mib} \
         || echo BENCH-FAILED guest helper\n\
         echo BENCH-DONE\n\
         $bb poweroff -f\n"
    )
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// Connect through the VM socket to guest port `port`; retries until the guest listens.
fn connect_guest(uds: &Path, port: u32, deadline: Instant) -> UnixStream {
    loop {
        if let Ok(mut s) = UnixStream::connect(uds) {
            writeln!(s, "CONNECT {port}").unwrap();
            let mut line = String::new();
            let mut r = BufReader::new(s.try_clone().unwrap());
            if r.read_line(&mut line).is_ok() && line.starts_with("OK ") {
                return s;
            }
        }
        assert!(Instant::now() < deadline, "the guest never accepted");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut kernel = std::env::var_os("KVMBOX_KERNEL").map(PathBuf::from);
    let mut mib = 16usize;
    let mut kvmbox = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("kvmbox")))
        .unwrap_or_else(|| PathBuf::from("target/release/kvmbox"));
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(val())),
            "--kvmbox" => kvmbox = PathBuf::from(val()),
            "--mib" => mib = val().parse().expect("--mib N"),
            other => panic!("unknown argument {other}"),
        }
    }
    let kernel = kernel.expect("--kernel K (or KVMBOX_KERNEL) is required");
    let dir = tempfile::tempdir().expect("tempdir");
    let helper = dir.path().join("vsock_bench_guest");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vsock_bench_guest.c");
    let status = Command::new("gcc")
        .args(["-static", "-O2", "-s", "-o"])
        .arg(&helper)
        .arg(&src)
        .status()
        .expect("gcc");
    assert!(status.success(), "gcc failed");

    let mut fs = Initramfs::busybox(Path::new("/bin/busybox"), &init_script(mib)).expect("busybox");
    fs.host_file("bin/vsock_bench_guest", &helper).unwrap();
    let initrd = dir.path().join("initramfs.cpio");
    std::fs::write(&initrd, fs.to_bytes()).unwrap();

    let uds = dir.path().join("vsock.sock");
    let listener = UnixListener::bind(format!("{}_{GUEST_TO_HOST_PORT}", uds.display())).unwrap();
    let bytes = mib << 20;
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let start = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        let took = start.elapsed();
        drop(s); // EOF: the guest stops its clock
        (got, took)
    });

    eprintln!(
        "vsock_bench: kvmbox {}, kernel {}, {mib} MiB each way",
        kvmbox.display(),
        kernel.display()
    );
    let console = dir.path().join("console");
    let start = Instant::now();
    let mut child = Command::new(&kvmbox)
        .args(["vm", "boot", "--kernel"])
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .arg("--vsock")
        .arg(format!("3,{}", uds.display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&console).unwrap())
        .spawn()
        .expect("run kvmbox");

    let deadline = Instant::now() + Duration::from_secs(3600);
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("BENCH-LISTENING")
    {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no BENCH-LISTENING");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut host_to_guest = None;
    if child.try_wait().unwrap().is_none() {
        let mut s = connect_guest(&uds, HOST_TO_GUEST_PORT, deadline);
        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i * 13) as u8).collect();
        let t = Instant::now();
        let mut sent = 0;
        while sent < bytes {
            let n = chunk.len().min(bytes - sent);
            s.write_all(&chunk[..n]).unwrap();
            sent += n;
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        host_to_guest = Some(t.elapsed());
    }
    let status = child.wait().unwrap();
    let out = std::fs::read_to_string(&console).unwrap_or_default();
    if !status.success() || !out.contains("BENCH-DONE") || out.contains("BENCH-FAILED") {
        eprintln!("{out}\nvsock_bench: the guest run failed ({status})");
        std::process::exit(1);
    }
    for l in out.lines().filter(|l| l.starts_with("BENCH vsock")) {
        println!("{}", l.trim_start_matches("BENCH "));
    }
    let (got, took) = receiver.join().unwrap();
    assert_eq!(got, bytes, "the host received {got} of {bytes} bytes");
    println!(
        "vsock guest-to-host {:.2} MB/s (host clock, first byte to EOF)",
        mbps(got, took)
    );
    if let Some(d) = host_to_guest {
        println!(
            "vsock host-to-guest {:.2} MB/s (host clock, OK line to the guest's close)",
            mbps(bytes, d)
        );
    }
    println!(
        "(whole boot + benchmark: {:.1} s)",
        start.elapsed().as_secs_f64()
    );
}
