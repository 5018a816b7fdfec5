#!/usr/bin/env bash
# Boot kvmbox's guest kernel in QEMU microvm with a busybox initramfs and
# check that it reaches userspace and powers off (see docs/kernel.md).
#
#   kernel-config/qemu-boot-test.sh [options]
#     --kernel PATH     vmlinux to boot (default: `kernel-config/build.sh | tail -1`)
#     --smp N           vCPUs (default 1)
#     --memory MIB      guest RAM (default 256)
#     --no-flag         do NOT pass kvmbox.emulated_cpu (expected to fail on
#                       nested-PVM hosts: emulation failure)
#     --checks          init also checks cgroup2 controllers, /sys/bus/virtio,
#                       the CPU count and /dev/port before powering off
#     --runs N          boot N times (default 1)
#     --timeout S       per boot (default 120)
#
# Prints one line per boot: "boot N: ok, init line at X.XXs, exit after Y.YYs"
# (or the failure) and the guest console into $KVMBOX_TEST_LOGDIR (default a
# temporary directory).  Exit status 0 only if every boot reached the init
# line and powered off (or, with --no-flag, only if every boot failed).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KERNEL=
SMP=1
MEM=256
FLAG=1
CHECKS=0
RUNS=1
TIMEOUT=120
while [ $# -gt 0 ]; do
	case "$1" in
	--kernel) KERNEL=$2; shift ;;
	--smp) SMP=$2; shift ;;
	--memory) MEM=$2; shift ;;
	--no-flag) FLAG=0 ;;
	--checks) CHECKS=1 ;;
	--runs) RUNS=$2; shift ;;
	--timeout) TIMEOUT=$2; shift ;;
	-h | --help) sed -n '2,20s/^# \{0,1\}//p' "$0"; exit 0 ;;
	*) echo "qemu-boot-test: unknown argument '$1'" >&2; exit 2 ;;
	esac
	shift
done

[ -n "$KERNEL" ] || KERNEL=$("$HERE/build.sh" | tail -1)
[ -f "$KERNEL" ] || { echo "qemu-boot-test: no kernel at '$KERNEL'" >&2; exit 2; }
BUSYBOX=$(command -v busybox || true)
[ -n "$BUSYBOX" ] && file -L "$BUSYBOX" | grep -q 'statically linked' ||
	{ echo "qemu-boot-test: need a static busybox (apt-get install busybox-static)" >&2; exit 2; }
[ -c /dev/kvm ] || { echo "qemu-boot-test: /dev/kvm missing" >&2; exit 2; }

LOGDIR=${KVMBOX_TEST_LOGDIR:-$(mktemp -d /tmp/kvmbox-boot.XXXXXX)}
mkdir -p "$LOGDIR"
ROOT="$LOGDIR/initramfs"
rm -rf "$ROOT"
mkdir -p "$ROOT"/{bin,dev,proc,sys,tmp}
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in sh echo cat ls mount poweroff grep wc printf dd mkdir sleep; do
	ln -s busybox "$ROOT/bin/$applet"
done

{
	echo '#!/bin/sh'
	echo 'export PATH=/bin'
	echo 'echo "KVMBOX-INIT: userspace reached"'
	if [ "$CHECKS" = 1 ]; then
		cat <<'EOF'
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "CHECK cmdline: $(cat /proc/cmdline)"
echo "CHECK cpus online: $(cat /sys/devices/system/cpu/online) ($(grep -c ^processor /proc/cpuinfo) in cpuinfo)"
if mount -t cgroup2 cgroup2 /sys/fs/cgroup; then
	echo "CHECK cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
	echo "+memory +pids +cpu +cpuset" > /sys/fs/cgroup/cgroup.subtree_control &&
		mkdir /sys/fs/cgroup/c1 && echo "CHECK cgroup2 child: $(ls /sys/fs/cgroup/c1 | grep -c -e '^memory.max$' -e '^pids.max$' -e '^cpu.max$' -e '^cgroup.freeze$') of memory.max pids.max cpu.max cgroup.freeze"
else
	echo "CHECK cgroup2 mount FAILED"
fi
[ -d /sys/bus/virtio ] && echo "CHECK /sys/bus/virtio exists" || echo "CHECK /sys/bus/virtio MISSING"
if [ -c /dev/port ] && printf '\102' | dd of=/dev/port bs=1 seek=128 count=1 2>/dev/null; then
	echo "CHECK /dev/port write to port 0x80 ok"
else
	echo "CHECK /dev/port write FAILED"
fi
grep -o -w -e smap -e smep -e xsave -e pcid -e popcnt -e cx16 /proc/cpuinfo | sort -u | tr '\n' ' ' | sed 's/^/CHECK cpu flags still set: /'; echo
echo "CHECK uname: $(cat /proc/version)"
EOF
	fi
	echo 'poweroff -f'
} >"$ROOT/init"
chmod +x "$ROOT/init"
(cd "$ROOT" && find . | cpio -o -H newc --quiet) >"$LOGDIR/init.cpio"

APPEND="console=ttyS0 rodata=off lpj=10000000 tsc=reliable no_timer_check quiet panic=-1"
[ "$FLAG" = 1 ] && APPEND="console=ttyS0 kvmbox.emulated_cpu rodata=off lpj=10000000 tsc=reliable no_timer_check quiet panic=-1"

failures=0
for run in $(seq 1 "$RUNS"); do
	log="$LOGDIR/boot-$run.log"
	start=$EPOCHREALTIME
	line_at=
	set +e
	timeout "$TIMEOUT" qemu-system-x86_64 -M microvm,acpi=off -enable-kvm -cpu host -m "$MEM" -smp "$SMP" \
		-nodefaults -no-user-config -nographic -serial stdio \
		-kernel "$KERNEL" -initrd "$LOGDIR/init.cpio" -append "$APPEND" \
		-device isa-debug-exit,iobase=0xf4,iosize=4 -no-reboot </dev/null 2>&1 |
		while IFS= read -r l; do
			printf '%s\n' "$l"
			case "$l" in *"KVMBOX-INIT: userspace reached"*)
				echo "$EPOCHREALTIME" >"$log.line_at" ;;
			esac
		done >"$log"
	rc=${PIPESTATUS[0]}
	set -e
	end=$EPOCHREALTIME
	total=$(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.2f", b-a}')
	if [ -f "$log.line_at" ]; then
		line_at=$(awk -v a="$start" -v b="$(cat "$log.line_at")" 'BEGIN{printf "%.2f", b-a}')
		rm -f "$log.line_at"
	fi
	# QEMU isa-debug-exit: exit status (value << 1) | 1; the kernel writes 0.
	if [ -n "$line_at" ] && [ "$rc" = 1 ]; then
		outcome="ok, init line at ${line_at}s, powered off after ${total}s"
		[ "$FLAG" = 1 ] || failures=$((failures + 1))
	else
		why="qemu exit $rc"
		[ "$rc" = 124 ] && why="timeout after ${TIMEOUT}s"
		grep -q 'emulation failure' "$log" && why="$why, KVM emulation failure"
		outcome="FAILED ($why${line_at:+, init line at ${line_at}s})"
		[ "$FLAG" = 0 ] || failures=$((failures + 1))
	fi
	echo "boot $run (smp $SMP, mem ${MEM}M, flag $FLAG): $outcome; console: $log"
	grep '^CHECK' "$log" || true
done
[ "$failures" = 0 ]
