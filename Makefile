# kvmbox developer entry points. `make demo` and `make test` are the two to know.

CARGO   ?= cargo
RELEASE := target/release/kvmbox
BENCH_RUNS ?= 20
BENCH_OUT  ?= target/bench

.PHONY: all build demo test lint fmt bench clean-demo

all: build

## build: release build of the whole workspace
build:
	$(CARGO) build --release --workspace

## demo: run a busybox container in namespace mode and print its output and wall time
demo: build
	@set -eu; \
	t=$$(mktemp -d /tmp/kvmbox-demo.XXXXXX); \
	trap 'rm -rf "$$t"' EXIT; \
	mkdir -p "$$t/bundle/rootfs/bin" "$$t/bundle/rootfs/proc" "$$t/bundle/rootfs/dev" \
	         "$$t/bundle/rootfs/sys" "$$t/bundle/rootfs/tmp"; \
	cp /bin/busybox "$$t/bundle/rootfs/bin/busybox"; \
	for a in sh echo uname hostname; do ln -s busybox "$$t/bundle/rootfs/bin/$$a"; done; \
	printf '%s\n' \
	  '{' \
	  '  "ociVersion": "1.0.2",' \
	  '  "process": {' \
	  '    "terminal": false, "user": {"uid": 0, "gid": 0}, "cwd": "/",' \
	  '    "args": ["sh", "-c", "echo hello from a kvmbox container on $$(uname -s) $$(uname -r), hostname $$(hostname)"],' \
	  '    "env": ["PATH=/bin"],' \
	  '    "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},' \
	  '    "noNewPrivileges": true' \
	  '  },' \
	  '  "root": {"path": "rootfs", "readonly": true},' \
	  '  "hostname": "kvmbox-demo",' \
	  '  "mounts": [' \
	  '    {"destination": "/proc", "type": "proc", "source": "proc"},' \
	  '    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}' \
	  '  ],' \
	  '  "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}]}' \
	  '}' > "$$t/bundle/config.json"; \
	echo "== namespace mode: $(RELEASE) --isolation namespace run --bundle $$t/bundle demo-$$$$"; \
	start=$$(date +%s%N); \
	$(RELEASE) --root "$$t/state" --isolation namespace run --bundle "$$t/bundle" "demo-$$$$"; \
	end=$$(date +%s%N); \
	echo "== wall time: $$(( (end - start) / 1000000 )) ms (create + start + wait + delete)"; \
	echo "== VM mode (--isolation vm): not built yet; it arrives with the microVM issue"

## test: every test tier (unit + end-to-end; the end-to-end suites need root)
test:
	$(CARGO) test --workspace --no-fail-fast

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## fmt: format the workspace
fmt:
	$(CARGO) fmt --all

## bench: kvmbox vs runc vs crun, `run` of /bin/true; writes $(BENCH_OUT)/results.md
bench: build
	$(RELEASE) --isolation namespace bench --runs $(BENCH_RUNS) --output $(BENCH_OUT)
