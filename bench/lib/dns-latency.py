#!/usr/bin/env python3
"""Round-trip times of DNS A queries for NAME to SERVER (default 127.0.0.11:53), one
per line in milliseconds: bench/compare-docker.sh runs it inside a container's network
namespace (nsenter --net) to time the embedded DNS of wharfd and of dockerd.

usage: dns-latency.py NAME COUNT [SERVER]

Hand-written query (the standard library has no DNS client and the bench adds no
package for it): a header, the name's labels, type A, class IN. A lost or wrong answer
fails the run: the figure is only about answers that came.
"""
import random
import socket
import struct
import sys
import time


def query(name, ident):
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)  # RD, one question
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p)
    return header + labels + b"\0" + struct.pack("!HH", 1, 1)


def main():
    name, count = sys.argv[1], int(sys.argv[2])
    server = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.11"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    for _ in range(count):
        ident = random.randrange(1 << 16)
        packet = query(name, ident)
        start = time.perf_counter()
        sock.sendto(packet, (server, 53))
        answer, _ = sock.recvfrom(4096)
        elapsed = time.perf_counter() - start
        got_id, flags, _, answers = struct.unpack("!HHHH", answer[:8])
        if got_id != ident or flags & 0xF != 0 or answers == 0:
            sys.exit(f"{name}: bad answer (id {got_id}, rcode {flags & 0xF}, {answers} answers)")
        print(f"{elapsed * 1000:.3f}")


if __name__ == "__main__":
    main()
