#!/usr/bin/env python3
"""Write seed inputs for the vsock_tx fuzz target (layout: see fuzz_targets/vsock_tx.rs)."""
import struct, pathlib

Q = 16
BUF = 0x4000

def desc(addr, ln, flags=0, nxt=0):
    return struct.pack("<QIHH", addr, ln, flags, nxt)

def table(descs):
    b = b"".join(descs)
    return b + b"\0" * (16 * Q - len(b))

def avail(heads):
    b = struct.pack("<HH", 0, len(heads)) + b"".join(struct.pack("<H", h) for h in heads)
    return b + b"\0" * (4 + 2 * Q - len(b))

def hdr(op, src_port, dst_port, ln=0, flags=0, buf_alloc=65536, fwd=0, src_cid=3, dst_cid=2, typ=1):
    return struct.pack("<QQIIIHHIII", src_cid, dst_cid, src_port, dst_port, ln, typ, op, flags, buf_alloc, fwd)

NEXT, WRITE = 1, 2
def seed(packets):
    """packets: list of (header bytes, payload bytes)."""
    mem = bytearray()
    tx = []
    heads = []
    for h, data in packets:
        haddr = BUF + len(mem)
        mem += h + b"\0" * (64 - len(h))
        heads.append(len(tx))
        if data:
            daddr = BUF + len(mem)
            mem += data + b"\0" * (-len(data) % 16)
            tx.append(desc(haddr, 44, NEXT, len(tx) + 1))
            tx.append(desc(daddr, len(data)))
        else:
            tx.append(desc(haddr, 44))
    rx = []
    rx_heads = []
    for i in range(4):
        rx_heads.append(len(rx))
        rx.append(desc(0x10000 + i * 0x2000, 44, NEXT | WRITE, len(rx) + 1))
        rx.append(desc(0x10000 + i * 0x2000 + 64, 4096, WRITE))
    host = b"hello from host\n"
    return table(tx) + avail(heads) + table(rx) + avail(rx_heads) + host + bytes(mem)

out = pathlib.Path(__file__).parent / "vsock_tx"
out.mkdir(exist_ok=True)
(out / "connect_send_shutdown").write_bytes(seed([
    (hdr(1, 1000, 1), b""),                 # REQUEST to host port 1 (listening)
    (hdr(5, 1000, 1, 5), b"hello"),         # RW
    (hdr(6, 1000, 1), b""),                 # CREDIT_UPDATE
    (hdr(7, 1000, 1), b""),                 # CREDIT_REQUEST
    (hdr(4, 1000, 1, flags=3), b""),        # SHUTDOWN both
]))
(out / "unknown_and_refused").write_bytes(seed([
    (hdr(1, 1001, 2), b""),                 # REQUEST to a port nobody listens on
    (hdr(5, 1002, 1, 3), b"abc"),           # RW without a connection
    (hdr(3, 1003, 1), b""),                 # RST without a connection
    (hdr(99, 1004, 1), b""),                # unknown op
    (hdr(1, 1005, 1, typ=2), b""),          # seqpacket
    (hdr(1, 1006, 1, src_cid=9), b""),      # forged source cid
]))
(out / "connect_then_rst").write_bytes(seed([
    (hdr(1, 2000, 1), b""),
    (hdr(5, 2000, 1, 4), b"data"),
    (hdr(3, 2000, 1), b""),
]))
