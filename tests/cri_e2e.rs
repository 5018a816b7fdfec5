//! CRI end-to-end tests for `containerd-shim-kvmbox-v2`, driven as kubelet drives a node: a
//! private containerd (Debian's containerd 1.6 package) with its CRI plugin enabled and the two
//! runtimes of docs/containerd.md (`kvmbox`: vm isolation, `kvmbox-namespace`: namespace
//! isolation, each chosen by the `ConfigPath` of its runtime options), and the CRI gRPC API
//! (crate `k8s-cri`, runtime.v1) choosing the runtime per pod with `runtime_handler`, as a
//! RuntimeClass does. Pods use host networking (no CNI here). Needs root; the vm test needs
//! /dev/kvm, the static agent (`make agent`) and the guest kernel (build cache or KVMBOX_KERNEL).

#[path = "common/containerd.rs"]
mod containerd;
#[path = "common/image.rs"]
mod image;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatsRequest,
    ContainerStatusRequest, CreateContainerRequest, ExecSyncRequest, ImageSpec, ImageStatusRequest,
    LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxState, PodSandboxStatusRequest,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest, UpdateContainerResourcesRequest, VersionRequest,
};
use tonic::transport::Channel;

use containerd::{
    gone, gone_now, pids_mentioning, require_tools, shim_dir, shims_for, vmms_mentioning,
};
use image::{build_busybox_image, build_busybox_image_as, IMAGE_NAME};

/// The pod sandbox ("pause") image: busybox whose command stays up (the plain image's `sh`
/// would exit at once and leave the sandbox NOTREADY).
const PAUSE_IMAGE: &str = "docker.io/library/kvmbox-busybox:pause";
/// containerd's namespace for CRI.
const K8S_NAMESPACE: &str = "k8s.io";
/// The RuntimeClass handlers registered in the config (docs/containerd.md).
const VM_HANDLER: &str = "kvmbox";
const NAMESPACE_HANDLER: &str = "kvmbox-namespace";
/// Longest wait for a CRI call that does not boot a VM.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a CRI call that may boot a microVM (30–90 s here, more when loaded).
const VM_CALL_TIMEOUT: Duration = Duration::from_secs(900);
const CGROUP_CONTROLLERS: &[&str] = &["memory", "pids", "cpu", "cpuset", "cpuacct", "freezer"];

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A private containerd with the CRI plugin in a temp dir, and a CRI client connected to it;
/// stopped and everything it left removed on drop.
struct Node {
    dir: PathBuf,
    /// KVMBOX_SHIM_ROOT, deep on purpose, see [`Node::start`].
    shim_root: PathBuf,
    child: Option<Child>,
    /// Parent cgroup of this node's pods (cgroupfs style, as kubelet's `cgroup_parent`).
    cgroup_parent: String,
    tokio: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl Node {
    fn start() -> Node {
        require_tools("cri_e2e");
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!("/tmp/kvmbox-cri-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for sub in ["cni/bin", "cni/conf", "pods"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        // A VM's vsock socket is `<KVMBOX_SHIM_ROOT>/k8s.io/<id>/vsock.sock`; with CRI's
        // 64-character ids this root makes it longer than a sockaddr_un holds (107 bytes),
        // which kvmbox must handle (src/vmm/unix_path.rs).
        let shim_root = dir.join("kvmbox-shim-state");
        let t = dir.display().to_string();
        fs::write(dir.join("kvmbox-vm.toml"), "isolation = \"vm\"\n").unwrap();
        fs::write(
            dir.join("kvmbox-namespace.toml"),
            "isolation = \"namespace\"\n",
        )
        .unwrap();
        // The runtimes exactly as docs/containerd.md registers them (with runc's entry: a
        // `runtimes` table replaces containerd's default one, and CRI refuses to load when
        // its default runtime `runc` is missing); the CRI plugin keeps its
        // root and state under containerd's (here the temp dir), CNI points to empty dirs and
        // the streaming server takes a free port.
        let base = containerd::base_config(&dir, true);
        let config = format!(
            r#"{base}[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # This machine withholds CAP_SYS_RESOURCE even from root, so nothing may lower an
  # oom_score_adj (CRI's -998 for the sandbox fails with EACCES, with runc too): clamp it.
  restrict_oom_score_adj = true
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{t}/cni/bin"
  conf_dir = "{t}/cni/conf"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kvmbox]
  runtime_type = "io.containerd.kvmbox.v2"
  pod_annotations = ["io.kvmbox.*"]
  container_annotations = ["io.kvmbox.*"]
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kvmbox.options]
    ConfigPath = "{t}/kvmbox-vm.toml"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kvmbox-namespace]
  runtime_type = "io.containerd.kvmbox.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kvmbox-namespace.options]
    ConfigPath = "{t}/kvmbox-namespace.toml"
"#
        );
        fs::write(dir.join("config.toml"), config).unwrap();
        let path = format!(
            "{}:{}",
            shim_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = fs::File::create(dir.join("containerd.log")).unwrap();
        let child = StartGuard(
            Some(
                Command::new("containerd")
                    .arg("--config")
                    .arg(dir.join("config.toml"))
                    .env("PATH", path)
                    .env("KVMBOX_SHIM_ROOT", &shim_root)
                    // Boots are slow on a loaded machine: let vm-mode creates wait for the agent.
                    .env("KVMBOX_AGENT_TIMEOUT", "600")
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .expect("start containerd"),
            ),
            dir.clone(),
        );
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let sock = format!("unix://{t}/containerd.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        // The socket comes up before the CRI plugin has registered its services: wait for a
        // CRI Version answer.
        let (runtime, images) = loop {
            let connected = tokio.block_on(async {
                let mut rt = RuntimeServiceClient::connect(sock.clone()).await.ok()?;
                rt.version(VersionRequest::default()).await.ok()?;
                let images = ImageServiceClient::connect(sock.clone()).await.ok()?;
                Some((rt, images))
            });
            if let Some(clients) = connected {
                break clients;
            }
            assert!(
                Instant::now() < deadline,
                "containerd's CRI service did not come up; log:\n{}",
                fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let node = Node {
            cgroup_parent: format!("/kvmbox-cri-{}-{n}", std::process::id()),
            dir,
            shim_root,
            child: child.disarm(),
            tokio,
            runtime,
            images,
        };
        // Images for CRI live in containerd's namespace k8s.io.
        let app = build_busybox_image(&node.dir.join("app-image"));
        let pause = build_busybox_image_as(
            &node.dir.join("pause-image"),
            PAUSE_IMAGE,
            &["sleep", "inf"],
        );
        for tar in [app, pause] {
            node.ctr(&["image", "import", tar.to_str().unwrap()]);
        }
        for name in [IMAGE_NAME, PAUSE_IMAGE] {
            node.wait_for_image(name);
        }
        node
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// The last `n` lines of containerd's log (for failure messages).
    fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `ctr -n k8s.io <args>` against this containerd; must succeed.
    fn ctr(&self, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .arg("-a")
            .arg(self.dir.join("containerd.sock"))
            .args(["-n", K8S_NAMESPACE])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr");
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The CRI image service lists `name` (it learns of imported images from events).
    fn wait_for_image(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut images = self.images.clone();
            let req = ImageStatusRequest {
                image: Some(ImageSpec {
                    image: name.to_string(),
                    ..Default::default()
                }),
                verbose: false,
            };
            let found = self
                .tokio
                .block_on(images.image_status(req))
                .map(|r| r.into_inner().image.is_some());
            if found.as_ref().is_ok_and(|f| *f) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "CRI does not see image {name}: {found:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Run one CRI runtime-service call with a deadline of `timeout`.
    fn call<T, F, Fut>(&self, timeout: Duration, what: &str, f: F) -> Result<T, tonic::Status>
    where
        F: FnOnce(RuntimeServiceClient<Channel>, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let out = self
            .tokio
            .block_on(f(self.runtime.clone(), timeout))
            .map(tonic::Response::into_inner);
        eprintln!(
            "cri: {what}: {} in {:.1} s",
            if out.is_ok() { "ok" } else { "failed" },
            started.elapsed().as_secs_f64()
        );
        out
    }

    /// Like [`Node::call`], panicking with the error and containerd's log on failure.
    fn must<T, F, Fut>(&self, timeout: Duration, what: &str, f: F) -> T
    where
        F: FnOnce(RuntimeServiceClient<Channel>, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call(timeout, what, f).unwrap_or_else(|e| {
            panic!(
                "CRI {what} failed: {e:?}\ncontainerd log (tail):\n{}",
                self.log_tail(60)
            )
        })
    }

    /// kvmbox's state root for CRI's containers.
    fn kvmbox_root(&self) -> PathBuf {
        self.shim_root.join(K8S_NAMESPACE)
    }

    /// The host cgroup directory of container `id` in `controller` (cgroup v1).
    fn cgroup_dir(&self, controller: &str, id: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(self.cgroup_parent.trim_start_matches('/'))
            .join(id)
    }

    /// What is left of containers `ids` (kvmbox state, host cgroups, rootfs mounts, shims).
    fn leftovers(&self, ids: &[&str]) -> Vec<String> {
        let mut left = Vec::new();
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        for id in ids {
            let state = self.kvmbox_root().join(id);
            if state.exists() {
                left.push(format!("kvmbox state {}", state.display()));
            }
            for c in CGROUP_CONTROLLERS {
                let dir = self.cgroup_dir(c, id);
                if dir.exists() {
                    left.push(format!("cgroup {}", dir.display()));
                }
            }
            for line in mounts
                .lines()
                .filter(|l| l.contains(&format!("/{id}/rootfs")))
            {
                left.push(format!("rootfs mount: {line}"));
            }
        }
        let sock = self.dir.join("containerd.sock").display().to_string();
        for pid in pids_mentioning(&sock) {
            if !gone_now(pid) {
                let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                left.push(format!(
                    "process {pid}: {}",
                    String::from_utf8_lossy(&cmdline).replace('\0', " ")
                ));
            }
        }
        left
    }

    /// Nothing is left of containers `ids` (within `patience`).
    fn assert_no_leftovers(&self, ids: &[&str], patience: Duration) {
        let deadline = Instant::now() + patience;
        loop {
            let left = self.leftovers(ids);
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "leftovers: {left:#?}\ncontainerd log (tail):\n{}",
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Kills containerd (started by [`Node::start`]) and removes its directory if the start fails
/// before the node owns them (the failure message carries containerd's log).
struct StartGuard(Option<Child>, PathBuf);

impl StartGuard {
    fn disarm(mut self) -> Option<Child> {
        self.0.take()
    }
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = fs::remove_dir_all(&self.1);
        }
    }
}

impl Drop for Node {
    /// Stop everything this containerd started and remove its directory.
    fn drop(&mut self) {
        let roots = [self.kvmbox_root()];
        let left = containerd::Leftovers {
            kvmbox_roots: &roots,
            socket: &self.dir.join("containerd.sock"),
            // The shim root is inside `dir`.
            dirs: &[&self.dir],
            // The pods' parent cgroup in every hierarchy (kubelet's; removable once empty).
            cgroup_parent: &self.cgroup_parent,
        };
        containerd::clean_up(self.child.take(), &left);
    }
}

/// Host networking, a pid namespace per container, the pod's IPC namespace: what kubelet
/// sends for a `hostNetwork: true` pod.
fn host_network() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A pod's sandbox config as kubelet builds it (host network, logs under `log_directory`).
fn pod_config(node: &Node, name: &str) -> PodSandboxConfig {
    let uid = format!("uid-{name}-{}", std::process::id());
    let log_directory = node.dir.join("pods").join(&uid);
    fs::create_dir_all(log_directory.join("app")).unwrap();
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid,
            namespace: "default".to_string(),
            attempt: 0,
        }),
        log_directory: log_directory.display().to_string(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: node.cgroup_parent.clone(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(host_network()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The app container: busybox printing `cri-ok` then sleeping, with a CPU share (kubelet
/// always sends one; kvmbox then gives it a cpu,cpuacct cgroup on a v1 host).
fn app_config() -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "app".to_string(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: IMAGE_NAME.to_string(),
            ..Default::default()
        }),
        command: ["sh", "-c", "echo cri-ok; sleep 1000"]
            .map(String::from)
            .to_vec(),
        log_path: "app/0.log".to_string(),
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                cpu_shares: 512,
                ..Default::default()
            }),
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(host_network()),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// What one pod run found, for the mode-specific checks.
struct PodRun {
    sandbox: String,
    container: String,
    log_file: PathBuf,
}

/// ExecSync `cmd` in container `id`: (exit code, stdout, stderr).
fn exec_sync(node: &Node, timeout: Duration, id: &str, cmd: &[&str]) -> (i32, String, String) {
    let req = ExecSyncRequest {
        container_id: id.to_string(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout: timeout.as_secs() as i64,
    };
    let out = node.must(timeout, &format!("ExecSync {cmd:?}"), |mut rt, t| {
        let mut req = tonic::Request::new(req);
        req.set_timeout(t);
        async move { rt.exec_sync(req).await }
    });
    (
        out.exit_code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A CRI request with a deadline.
fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(timeout);
    req
}

/// RunPodSandbox with `handler`, then CreateContainer + StartContainer of the app container;
/// checks the sandbox is READY and the app RUNNING.
fn run_pod(node: &Node, handler: &str, name: &str, create_timeout: Duration) -> PodRun {
    let config = pod_config(node, name);
    let log_file = Path::new(&config.log_directory).join("app/0.log");
    let run = RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: handler.to_string(),
    };
    let sandbox = node
        .must(create_timeout, "RunPodSandbox", |mut rt, t| async move {
            rt.run_pod_sandbox(request(run, t)).await
        })
        .pod_sandbox_id;
    let status_req = PodSandboxStatusRequest {
        pod_sandbox_id: sandbox.clone(),
        verbose: false,
    };
    let status = node.must(CALL_TIMEOUT, "PodSandboxStatus", |mut rt, t| async move {
        rt.pod_sandbox_status(request(status_req, t)).await
    });
    let state = status.status.as_ref().map(|s| s.state);
    assert_eq!(
        state,
        Some(PodSandboxState::SandboxReady as i32),
        "{status:#?}"
    );

    let create = CreateContainerRequest {
        pod_sandbox_id: sandbox.clone(),
        config: Some(app_config()),
        sandbox_config: Some(config),
    };
    let container = node
        .must(create_timeout, "CreateContainer", |mut rt, t| async move {
            rt.create_container(request(create, t)).await
        })
        .container_id;
    let start = StartContainerRequest {
        container_id: container.clone(),
    };
    node.must(create_timeout, "StartContainer", |mut rt, t| async move {
        rt.start_container(request(start, t)).await
    });
    assert_eq!(
        container_state(node, &container),
        ContainerState::ContainerRunning as i32
    );
    PodRun {
        sandbox,
        container,
        log_file,
    }
}

/// The container's CRI state (ContainerStatus).
fn container_state(node: &Node, id: &str) -> i32 {
    let req = ContainerStatusRequest {
        container_id: id.to_string(),
        verbose: false,
    };
    let status = node.must(CALL_TIMEOUT, "ContainerStatus", |mut rt, t| async move {
        rt.container_status(request(req, t)).await
    });
    status.status.expect("container status").state
}

/// ContainerStats: (working set bytes, available bytes, CPU usage ns) where reported.
fn container_stats(node: &Node, id: &str) -> (Option<u64>, Option<u64>, Option<u64>) {
    let req = ContainerStatsRequest {
        container_id: id.to_string(),
    };
    let stats = node
        .must(CALL_TIMEOUT, "ContainerStats", |mut rt, t| async move {
            rt.container_stats(request(req, t)).await
        })
        .stats
        .expect("container stats");
    eprintln!("cri: ContainerStats {id}: {stats:?}");
    let memory = stats.memory.unwrap_or_default();
    let cpu = stats
        .cpu
        .and_then(|c| c.usage_core_nano_seconds)
        .map(|v| v.value);
    (
        memory.working_set_bytes.map(|v| v.value),
        memory.available_bytes.map(|v| v.value),
        cpu,
    )
}

/// UpdateContainerResources with a new memory limit (and the CPU share kept).
fn update_memory_limit(node: &Node, id: &str, limit: i64) {
    let req = UpdateContainerResourcesRequest {
        container_id: id.to_string(),
        linux: Some(LinuxContainerResources {
            cpu_shares: 512,
            memory_limit_in_bytes: limit,
            ..Default::default()
        }),
        ..Default::default()
    };
    node.must(
        CALL_TIMEOUT,
        "UpdateContainerResources",
        |mut rt, t| async move { rt.update_container_resources(request(req, t)).await },
    );
}

/// The container's log file (CRI format: `<time> stdout F <line>`) has the line `want`.
fn assert_log_has(node: &Node, log_file: &Path, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = fs::read_to_string(log_file).unwrap_or_default();
        if text
            .lines()
            .any(|l| l.contains(" stdout ") && l.ends_with(&format!(" {want}")))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "log {} lacks {want:?}: {text:?}\ncontainerd log (tail):\n{}",
            log_file.display(),
            node.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox, as kubelet tears a pod
/// down.
fn tear_down(node: &Node, pod: &PodRun, timeout: Duration) {
    let stop = StopContainerRequest {
        container_id: pod.container.clone(),
        timeout: 2,
    };
    node.must(timeout, "StopContainer", |mut rt, t| async move {
        rt.stop_container(request(stop, t)).await
    });
    assert_eq!(
        container_state(node, &pod.container),
        ContainerState::ContainerExited as i32
    );
    let remove = RemoveContainerRequest {
        container_id: pod.container.clone(),
    };
    node.must(timeout, "RemoveContainer", |mut rt, t| async move {
        rt.remove_container(request(remove, t)).await
    });
    let stop = StopPodSandboxRequest {
        pod_sandbox_id: pod.sandbox.clone(),
    };
    node.must(timeout, "StopPodSandbox", |mut rt, t| async move {
        rt.stop_pod_sandbox(request(stop, t)).await
    });
    let remove = RemovePodSandboxRequest {
        pod_sandbox_id: pod.sandbox.clone(),
    };
    node.must(timeout, "RemovePodSandbox", |mut rt, t| async move {
        rt.remove_pod_sandbox(request(remove, t)).await
    });
}

/// A `kvmbox-namespace` pod: plain containers through the shim (the host's kernel answers),
/// exec, stats, an update reaching the host cgroup, the log file, and a teardown that leaves
/// nothing behind.
#[test]
fn namespace_pod_through_cri() {
    let node = Node::start();
    let pod = run_pod(&node, NAMESPACE_HANDLER, "ns-pod", CALL_TIMEOUT);
    let shims = shims_for(&pod.sandbox);
    assert_eq!(shims.len(), 1, "one shim for the pod: {shims:?}");
    assert!(
        shims_for(&pod.container).is_empty(),
        "the app container got its own shim"
    );

    let host = nix::sys::utsname::uname().unwrap();
    let host = host.release().to_string_lossy().into_owned();
    let (code, out, err) = exec_sync(&node, CALL_TIMEOUT, &pod.container, &["uname", "-r"]);
    assert_eq!((code, out.trim()), (0, host.as_str()), "stderr: {err}");
    let (code, _, _) = exec_sync(&node, CALL_TIMEOUT, &pod.container, &["sh", "-c", "exit 3"]);
    assert_eq!(code, 3);

    let (memory, available, cpu) = container_stats(&node, &pod.container);
    assert!(memory.is_some_and(|m| m > 0), "memory: {memory:?}");
    assert!(cpu.is_some_and(|c| c > 0), "cpu: {cpu:?}");
    // No limit yet: CRI reports nothing available (0), not a wrapped-around limit.
    assert_eq!(available, Some(0), "available bytes without a limit");

    update_memory_limit(&node, &pod.container, 64 << 20);
    let (memory, available, _) = container_stats(&node, &pod.container);
    assert_eq!(
        available.zip(memory).map(|(a, m)| a + m),
        Some(64 << 20),
        "available + working set is the new limit"
    );
    let limit = node
        .cgroup_dir("memory", &pod.container)
        .join("memory.limit_in_bytes");
    assert_eq!(
        fs::read_to_string(&limit)
            .unwrap_or_else(|e| panic!("{}: {e}", limit.display()))
            .trim(),
        (64u64 << 20).to_string()
    );

    assert_log_has(&node, &pod.log_file, "cri-ok");
    tear_down(&node, &pod, CALL_TIMEOUT);
    node.assert_no_leftovers(&[&pod.sandbox, &pod.container], Duration::from_secs(20));
    assert!(
        gone(shims[0], Duration::from_secs(10)),
        "the pod's shim lives on"
    );
}

/// A `kvmbox` pod: the sandbox boots one microVM and the app container joins it (one VMM for
/// the pod, the guest's kernel answers); exec, stats, an update visible in the guest's cgroup
/// v2, the log file, and a teardown that stops the VM and leaves nothing behind.
///
/// CRI names the sandbox's namespaces in the app container's spec by the sandbox task's host
/// pid (`/proc/<VMM pid>/ns/uts`, always; `ipc` unless host IPC): kvmbox points them at the
/// sandbox init's guest pid (this test found that they were passed through unchanged).
#[test]
fn vm_pod_through_cri() {
    let node = Node::start();
    let started = Instant::now();
    let pod = run_pod(&node, VM_HANDLER, "vm-pod", VM_CALL_TIMEOUT);
    eprintln!(
        "cri: vm pod running after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Its vsock socket's path is longer than a sockaddr_un holds: the VM works all the same.
    let socket = node.kvmbox_root().join(&pod.sandbox).join("vsock.sock");
    assert!(
        socket.as_os_str().len() > kvmbox::vmm::unix_path::SUN_PATH_MAX,
        "{}",
        socket.display()
    );
    let vmms = vmms_mentioning(&pod.sandbox);
    assert_eq!(vmms.len(), 1, "one VMM for the pod: {vmms:?}");
    assert!(
        vmms_mentioning(&pod.container).is_empty(),
        "the app container booted its own VM"
    );
    let shims = shims_for(&pod.sandbox);
    assert_eq!(shims.len(), 1, "one shim for the pod: {shims:?}");
    assert!(shims_for(&pod.container).is_empty());

    let (code, out, err) = exec_sync(&node, CALL_TIMEOUT, &pod.container, &["uname", "-r"]);
    assert_eq!(code, 0, "stderr: {err}");
    assert!(out.contains("kvmbox"), "not the guest kernel: {out:?}");
    let (code, _, _) = exec_sync(&node, CALL_TIMEOUT, &pod.container, &["sh", "-c", "exit 3"]);
    assert_eq!(code, 3);

    let (memory, _, cpu) = container_stats(&node, &pod.container);
    assert!(memory.is_some_and(|m| m > 0), "memory: {memory:?}");
    assert!(cpu.is_some_and(|c| c > 0), "cpu: {cpu:?}");

    update_memory_limit(&node, &pod.container, 48 << 20);
    let (memory, available, _) = container_stats(&node, &pod.container);
    assert_eq!(
        available.zip(memory).map(|(a, m)| a + m),
        Some(48 << 20),
        "available + working set is the new limit"
    );
    let (code, out, err) = exec_sync(
        &node,
        CALL_TIMEOUT,
        &pod.container,
        &["cat", "/sys/fs/cgroup/memory.max"],
    );
    assert_eq!(
        (code, out.trim()),
        (0, (48u64 << 20).to_string().as_str()),
        "stderr: {err}"
    );

    assert_log_has(&node, &pod.log_file, "cri-ok");
    tear_down(&node, &pod, VM_CALL_TIMEOUT);
    node.assert_no_leftovers(&[&pod.sandbox, &pod.container], Duration::from_secs(120));
    assert!(
        gone(vmms[0], Duration::from_secs(30)),
        "the pod's VM lives on"
    );
    assert!(
        gone(shims[0], Duration::from_secs(10)),
        "the pod's shim lives on"
    );
}
