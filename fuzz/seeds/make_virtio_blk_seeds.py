#!/usr/bin/env python3
"""Write seed inputs for the virtio_blk fuzz target (layout: see fuzz_targets/virtio_blk.rs).

Input = flags byte (bit 0: read-only disk) | descriptor table (16 x 16 bytes) |
avail ring (flags, idx, 16 x u16) | bytes copied to guest address 0x4000.
"""
import os
import struct
import sys

QSIZE = 16
BUFFERS = 0x4000
NEXT, WRITE = 1, 2
T_IN, T_OUT, T_FLUSH, T_GET_ID = 0, 1, 4, 8


def desc(addr, length, flags, nxt):
    return struct.pack("<QIHH", addr, length, flags, nxt)


def seed(read_only, chains, buffers):
    """chains: list of lists of (addr, len, writable); buffers: bytes at 0x4000."""
    table, heads, i = [], [], 0
    for chain in chains:
        heads.append(i)
        for j, (addr, length, writable) in enumerate(chain):
            last = j == len(chain) - 1
            flags = (WRITE if writable else 0) | (0 if last else NEXT)
            table.append(desc(addr, length, flags, 0 if last else i + 1))
            i += 1
    table = b"".join(table).ljust(16 * QSIZE, b"\0")
    ring = struct.pack("<HH", 0, len(heads)) + b"".join(struct.pack("<H", h) for h in heads)
    ring = ring.ljust(4 + 2 * QSIZE, b"\0")
    return bytes([1 if read_only else 0]) + table + ring + buffers


def header(t, sector):
    return struct.pack("<IIQ", t, 0, sector)


def main(out):
    os.makedirs(out, exist_ok=True)
    hdr = BUFFERS          # 16-byte headers at 0x4000, 0x4010, ...
    data = BUFFERS + 0x100  # data at 0x4100...
    status = BUFFERS + 0x80
    bufs = header(T_IN, 2) + header(T_OUT, 3) + header(T_FLUSH, 0) + header(T_GET_ID, 0)
    bufs = bufs.ljust(0x100, b"\0") + bytes(range(256)) * 4
    rw = [
        [(hdr, 16, False), (data, 512, True), (status, 1, True)],
        [(hdr + 16, 16, False), (data, 512, False), (status + 1, 1, True)],
        [(hdr + 32, 16, False), (status + 2, 1, True)],
        [(hdr + 48, 16, False), (data + 512, 20, True), (status + 3, 1, True)],
    ]
    seeds = {
        "rw_in_out_flush_getid": seed(False, rw, bufs),
        "ro_in_out_flush_getid": seed(True, rw, bufs),
        "in_two_segments": seed(False, [[(hdr, 16, False), (data, 512, True), (data + 512, 512, True), (status, 1, True)]], bufs),
        "in_beyond_capacity": seed(False, [[(hdr + 64, 16, False), (data, 512, True), (status, 1, True)]],
                                   bufs[:0x40] + header(T_IN, 16) + bufs[0x50:]),
    }
    for name, blob in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(blob)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "virtio_blk"))
