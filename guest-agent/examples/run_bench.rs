//! Time `create` (no exec FIFO) + waitpid + `destroy_cgroup` of a bundle, N times.
//! Usage (root): run_bench BUNDLE [N]   — BUNDLE holds config.json and its rootfs.

use std::path::PathBuf;
use std::time::Instant;

use guest_agent::container::{self, CreateRequest, OciState, Status};
use oci_spec::runtime::Spec;

fn main() {
    let mut args = std::env::args().skip(1);
    let bundle = PathBuf::from(args.next().expect("usage: run_bench BUNDLE [N]"));
    let n: usize = args.next().map(|s| s.parse().unwrap()).unwrap_or(30);
    let spec = Spec::load(bundle.join("config.json")).expect("load config.json");
    let rootfs = bundle.join(spec.root().as_ref().unwrap().path());
    let mut times = Vec::new();
    for i in 0..n {
        let id = format!("bench-{}-{i}", std::process::id());
        let state = OciState {
            oci_version: "1.0.2".into(),
            id: id.clone(),
            status: Status::Creating,
            pid: 0,
            bundle: bundle.clone(),
            annotations: Default::default(),
            created: None,
        };
        let req = CreateRequest {
            id: &id,
            bundle: &bundle,
            spec: &spec,
            rootfs: rootfs.clone(),
            exec_fifo: None,
            console_socket: None,
            no_pivot: false,
            preserve_fds: 0,
            cgroup_path: format!("/kvmbox-bench/{id}"),
        };
        let t = Instant::now();
        let c = container::create(&req, &state).expect("create");
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(c.pid, &mut status, 0) };
        let t1 = t.elapsed().as_secs_f64() * 1000.0;
        container::destroy_cgroup(&req.cgroup_path).expect("destroy cgroup");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        if std::env::var_os("VERBOSE").is_some() {
            eprintln!("run {i}: create+wait {t1:.2} ms, total {:.2} ms", times[i]);
        }
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "create+wait+destroy_cgroup over {n} runs: min {:.2} ms, median {:.2} ms, max {:.2} ms",
        times[0],
        times[n / 2],
        times[n - 1]
    );
}
