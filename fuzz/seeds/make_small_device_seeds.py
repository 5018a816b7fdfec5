#!/usr/bin/env python3
"""Write seed inputs for the virtio_rng, virtio_console and virtio_net fuzz targets (layouts:
see fuzz_targets/common/mod.rs and each target). Usage: make_small_device_seeds.py [seeds_dir]

Queue = descriptor table (16 x 16 bytes) | avail ring (flags, idx, 16 x u16); the rest of the
input after the target's own fields is copied to guest address 0x4000.
"""
import os
import struct
import sys

QSIZE = 16
BUF = 0x4000
NEXT, WRITE = 1, 2


def queue(chains):
    """chains: list of lists of (addr, len, writable)."""
    table, heads, i = [], [], 0
    for chain in chains:
        heads.append(i)
        for j, (addr, length, writable) in enumerate(chain):
            last = j == len(chain) - 1
            flags = (WRITE if writable else 0) | (0 if last else NEXT)
            table.append(struct.pack("<QIHH", addr, length, flags, 0 if last else i + 1))
            i += 1
    table = b"".join(table).ljust(16 * QSIZE, b"\0")
    ring = struct.pack("<HH", 0, len(heads)) + b"".join(struct.pack("<H", h) for h in heads)
    return table + ring.ljust(4 + 2 * QSIZE, b"\0")


def frame(n, seed=1):
    return bytes([0xff] * 6 + [2, 0, 0, 0, 0, 1]) + bytes((i * 3 + seed) & 0xff for i in range(n - 12))


def write(d, name, data):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main(out):
    payload = bytes(range(256)) * 8
    # rng: two good requests, a readable one, one split over two buffers.
    rng = os.path.join(out, "virtio_rng")
    write(rng, "fill", queue([[(BUF, 64, True)], [(BUF + 0x100, 16, True), (BUF + 0x200, 32, True)]]))
    write(rng, "readable", queue([[(BUF, 64, False)], [(BUF, 8, True)]]))
    # console: rx buffers, tx output, host input.
    con = os.path.join(out, "virtio_console")
    host = b"hello from the host\n".ljust(40, b"!")
    write(con, "echo", queue([[(BUF + 0x800, 64, True)], [(BUF + 0x900, 8, True)]])
          + queue([[(BUF, 20, False)], [(BUF + 20, 10, False), (BUF + 40, 5, False)]])
          + bytes([len(host) // 4]) + host + b"guest output here\n" + payload)
    # net: tx frames (header + frame), rx buffers, host frames.
    net = os.path.join(out, "virtio_net")
    f1 = frame(60)
    tx_buf = bytes(12) + f1
    rxq = queue([[(BUF + 0x1000, 1526, True)], [(BUF + 0x1800, 12, True), (BUF + 0x2000, 1514, True)]])
    txq = queue([[(BUF, 12, False), (BUF + 12, 60, False)], [(BUF, 72, False)]])
    frames = b"".join(struct.pack("<H", n) + frame(n)[:64] for n in (60, 1514))
    write(net, "both_ways", rxq + txq + bytes([1]) + frames + tx_buf + payload)
    write(net, "no_rx_buffers", queue([]) + txq + bytes([4 | 1]) + frames + tx_buf)
    write(net, "small_rx_buffer", queue([[(BUF + 0x1000, 100, True)], [(BUF + 0x1800, 1600, True)]])
          + queue([]) + bytes([8 | 1]) + frames)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__)))
