# kvmbox developer entry points. `make demo` and `make test` are the two to know.

CARGO   ?= cargo
RELEASE := target/release/kvmbox
# The guest agent (the microVM's /init) is linked statically for the guest (docs/vmm.md).
AGENT_TARGET ?= x86_64-unknown-linux-gnu
AGENT        := target/$(AGENT_TARGET)/release/kvmbox-agent
BENCH_RUNS       ?= 20
BENCH_VM_RUNS    ?= 3
BENCH_DENSITY    ?= 3
BENCH_VM_TIMEOUT ?= 1800
BENCH_OUT        ?= docs/bench
# fuzz-smoke: seconds of fuzzing per target after replaying its seeds
FUZZ_SECONDS     ?= 20
FUZZ_TARGETS     := vsock_tx virtio_blk virtio_fs virtio_rng virtio_console virtio_net

.PHONY: all build agent demo test lint fmt bench bench-namespace bench-containerd fuzz-smoke clean-demo

all: build

## build: release build of kvmbox, kvmbox-vmm and the shim, plus the static guest agent
# (-p kvmbox: a plain workspace build would also put a dynamically linked kvmbox-agent next to
# kvmbox, where the runtime looks for the agent first)
build: agent
	$(CARGO) build --release -p kvmbox --bins

## agent: the guest agent, statically linked (crt-static), at $(AGENT)
agent:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build -p guest-agent --release \
	  --bin kvmbox-agent --target $(AGENT_TARGET)

## demo: the same busybox bundle as a microVM and as a namespace container: outputs and times
# (the guest kernel comes from kernel-config/build.sh's cache, built on first use)
demo: build
	@set -eu; \
	kernel=$$(kernel-config/build.sh | tail -1); \
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
	for mode in vm namespace; do \
	  echo "== $$mode: $(RELEASE) --isolation $$mode run --bundle $$t/bundle demo-$$mode-$$$$"; \
	  start=$$(date +%s%N); \
	  if KVMBOX_KERNEL="$$kernel" KVMBOX_AGENT="$(CURDIR)/$(AGENT)" \
	     $(RELEASE) --root "$$t/state" --isolation $$mode run --bundle "$$t/bundle" \
	     "demo-$$mode-$$$$" > "$$t/$$mode.out" 2> "$$t/$$mode.err" < /dev/null; then \
	    code=0; else code=$$?; fi; \
	  end=$$(date +%s%N); \
	  cat "$$t/$$mode.out" "$$t/$$mode.err"; \
	  echo "$$(( (end - start) / 1000000 ))" > "$$t/$$mode.ms"; echo "$$code" > "$$t/$$mode.code"; \
	done; \
	echo; \
	printf '%-11s %-9s %-6s %s\n' MODE "WALL(ms)" EXIT OUTPUT; \
	for mode in vm namespace; do \
	  printf '%-11s %-9s %-6s %s\n' "$$mode" "$$(cat $$t/$$mode.ms)" "$$(cat $$t/$$mode.code)" \
	    "$$(head -1 $$t/$$mode.out)"; \
	done; \
	echo "(wall time of \`run\`: create + start + wait + delete; vm includes booting the guest kernel)"

## test: every test tier (unit + end-to-end; the end-to-end suites need root; VM tests use the
# static agent built by `agent` and the guest kernel from KVMBOX_KERNEL or the build cache)
test: agent
	$(CARGO) test --workspace --no-fail-fast

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## fmt: format the workspace
fmt:
	$(CARGO) fmt --all

## bench: every mode (kvmbox namespace, runc, crun, kvmbox vm, VMM and QEMU boots, density);
# regenerates $(BENCH_OUT)/bench.svg, bench.md and bench.json (docs/bench: the committed run that
# docs/vm-vs-container.md shows). Boots the guest kernel from kernel-config/build.sh's cache.
bench: build
	kernel=$$(kernel-config/build.sh | tail -1) && \
	KVMBOX_KERNEL="$$kernel" KVMBOX_AGENT="$(CURDIR)/$(AGENT)" $(RELEASE) bench \
	  --runs $(BENCH_RUNS) --vm-runs $(BENCH_VM_RUNS) --density $(BENCH_DENSITY) \
	  --vm-timeout $(BENCH_VM_TIMEOUT) --output $(BENCH_OUT)

## bench-namespace: only the container modes (kvmbox namespace, runc, crun), into target/bench
bench-namespace: build
	$(RELEASE) --isolation namespace bench --runs $(BENCH_RUNS) --output target/bench

## bench-containerd: `ctr run --rm ... /bin/true` with the kvmbox shim vs the runc shim (needs containerd)
bench-containerd: agent
	$(CARGO) test --release --test containerd_e2e -- --ignored --nocapture bench_ctr_run_true

## fuzz-smoke: every cargo-fuzz target (fuzz/) replays its committed seeds (the regression
# inputs of earlier crashes among them), then fuzzes for $(FUZZ_SECONDS) s from them. Needs the
# nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`). New corpus entries go
# to target/fuzz-corpus, never into fuzz/seeds. Long runs: docs/devices.md, "Fuzz runs".
fuzz-smoke:
	cd fuzz && cargo +nightly fuzz build
	@set -e; for t in $(FUZZ_TARGETS); do \
	  dir="$(CURDIR)/target/fuzz-corpus/$$t"; mkdir -p "$$dir"; \
	  echo "== fuzz $$t: seeds, then $(FUZZ_SECONDS) s (log: $$dir.log)"; \
	  if ! (cd fuzz && cargo +nightly fuzz run $$t "$$dir" "$(CURDIR)/fuzz/seeds/$$t" -- \
	        -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1) > "$$dir.log" 2>&1; then \
	    tail -n 40 "$$dir.log"; echo "fuzz-smoke: $$t failed (input in fuzz/artifacts/$$t)"; exit 1; \
	  fi; \
	  grep -E '^(#[0-9]+[[:space:]]+(INITED|DONE)|stat::(number_of_executed_units|peak_rss_mb))' "$$dir.log" || true; \
	done
