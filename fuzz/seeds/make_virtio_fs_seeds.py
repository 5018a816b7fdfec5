#!/usr/bin/env python3
"""Write seed inputs for the virtio_fs fuzz target (layout: see fuzz_targets/virtio_fs.rs).

Input = flags byte (bit 0: read-only share, bit 1: hiprio queue), then messages
`len: u16 | reply_len: u16 | split: u8 | place: u8 | len bytes of FUSE request`.
A fresh share per input: inode 1 is the root, lookups number inodes 2, 3, ...; handles from 1.
"""
import os
import struct
import sys

(LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK, MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK,
 OPEN, READ, WRITE, STATFS, RELEASE, FSYNC, SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR, FLUSH,
 INIT, OPENDIR, READDIR, RELEASEDIR, ACCESS, CREATE, BATCH_FORGET, FALLOCATE, READDIRPLUS,
 RENAME2, LSEEK) = (1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 20, 21, 22, 23, 24,
                    25, 26, 27, 28, 29, 34, 35, 42, 43, 44, 45, 46)
ROOT = 1
unique = 0


def req(opcode, nodeid, body=b"", uid=0):
    global unique
    unique += 1
    return struct.pack("<IIQQIIII", 40 + len(body), opcode, unique, nodeid, uid, 0, 1, 0) + body


def msg(data, reply_len=4096, split=255, place=0):
    return struct.pack("<HHBB", len(data), reply_len, split, place) + data


def init():
    return req(INIT, 0, struct.pack("<IIII", 7, 31, 0x20000, (1 << 22) | (1 << 5)))


def name(s):
    return s.encode() + b"\0"


def read_in(fh, off, size):
    return struct.pack("<QQIIQII", fh, off, size, 0, 0, 0, 0)


SEEDS = {
    "init": [init()],
    "lookup_read": [init(), req(LOOKUP, ROOT, name("f")),
                    req(OPEN, 2, struct.pack("<II", os.O_RDONLY, 0)),
                    req(READ, 2, read_in(1, 0, 4096)), req(FLUSH, 2, struct.pack("<QIIQ", 1, 0, 0, 0)),
                    req(RELEASE, 2, struct.pack("<QIIQ", 1, 0, 0, 0))],
    "create_write": [init(),
                     req(CREATE, ROOT, struct.pack("<IIII", 0o101, 0o100644, 0o22, 0) + name("new")),
                     req(WRITE, 2, struct.pack("<QQIIQII", 1, 0, 5, 0, 0, 0, 0) + b"hello"),
                     req(FSYNC, 2, struct.pack("<QII", 1, 0, 0)),
                     req(FALLOCATE, 2, struct.pack("<QQQII", 1, 0, 1 << 16, 0, 0))],
    "dirs": [init(), req(MKDIR, ROOT, struct.pack("<II", 0o755, 0o22) + name("x")),
             req(RENAME, ROOT, struct.pack("<Q", ROOT) + name("f") + name("g")),
             req(RENAME2, ROOT, struct.pack("<QII", ROOT, 0, 0) + name("g") + name("h")),
             req(UNLINK, ROOT, name("h")), req(RMDIR, ROOT, name("x")),
             req(SYMLINK, ROOT, name("s") + name("/etc/passwd")),
             req(LINK, ROOT, struct.pack("<Q", 2) + name("hard")),
             req(MKNOD, ROOT, struct.pack("<IIII", 0o10644, 0, 0o22, 0) + name("fifo"))],
    "readdir": [init(), req(OPENDIR, ROOT, struct.pack("<II", os.O_RDONLY, 0)),
                req(READDIRPLUS, ROOT, read_in(1, 0, 4096)), req(READDIR, ROOT, read_in(1, 0, 4096)),
                req(RELEASEDIR, ROOT, struct.pack("<QIIQ", 1, 0, 0, 0))],
    "escape": [init(), req(LOOKUP, ROOT, name("..")), req(LOOKUP, ROOT, name("l")),
               req(READLINK, 3), req(OPEN, 3, struct.pack("<II", os.O_RDONLY, 0)),
               req(LOOKUP, ROOT, name("d")), req(LOOKUP, 4, name("..")),
               req(LOOKUP, 4, name("../outside"))],
    "xattr": [init(), req(SETXATTR, ROOT, struct.pack("<II", 3, 0) + name("user.a") + b"abc"),
              req(GETXATTR, ROOT, struct.pack("<II", 64, 0) + name("user.a")),
              req(LISTXATTR, ROOT, struct.pack("<II", 64, 0)),
              req(REMOVEXATTR, ROOT, name("user.a"))],
    "attrs": [init(), req(GETATTR, ROOT, struct.pack("<IIQ", 0, 0, 0)), req(STATFS, ROOT),
              req(ACCESS, ROOT, struct.pack("<II", 7, 0)),
              req(LSEEK, ROOT, struct.pack("<QQII", 0, 0, 0, 0))],
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "virtio_fs")
    os.makedirs(out, exist_ok=True)
    for label, reqs in SEEDS.items():
        for ro in (0, 1):
            data = bytes([ro]) + b"".join(msg(r) for r in reqs)
            with open(os.path.join(out, f"{label}{'_ro' if ro else ''}"), "wb") as f:
                f.write(data)
    # hiprio: forgets after a lookup.
    forget = bytes([2]) + msg(init()) + msg(req(LOOKUP, ROOT, name("f"))) + \
        msg(req(FORGET, 2, struct.pack("<Q", 1)), 0) + \
        msg(req(BATCH_FORGET, 0, struct.pack("<II", 2, 0) + struct.pack("<QQ", 2, 1) * 2), 0)
    with open(os.path.join(out, "forget"), "wb") as f:
        f.write(forget)
    # Odd shapes: tiny reply buffers, split headers, reply in the hole, lying header lengths.
    odd = bytes([0]) + msg(init(), 8) + msg(init(), 4096, 10) + msg(init(), 4096, 255, 2) + \
        msg(init(), 4096, 255, 3) + msg(struct.pack("<I", 0xffffffff) + init()[4:])
    with open(os.path.join(out, "odd"), "wb") as f:
        f.write(odd)


if __name__ == "__main__":
    main()
