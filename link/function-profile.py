#!/usr/bin/env python3
"""Which functions of a binary run, counted exactly with one uprobe per function.

Used by link/profile-wharfd.sh to write link/wharfd.symbol-order. Sampling (perf)
misses the many functions that run once, at start-up or per pod, and those are what
spread a binary's resident pages; valgrind cannot run wharfd (no pidfd syscalls).
A uprobe on every function's entry counts every call, at a trap per call.

  function-profile.py register BINARY       one uprobe per function, enabled
  function-profile.py snapshot FILE         save the hit counts so far
  function-profile.py order START END OUT   write the ordering: functions run by START
                                            (most called first), then the others END ran
  function-profile.py clear                 disable and remove the probes (slow: the
                                            kernel waits for an RCU grace period per
                                            probe, minutes for wharfd's ~28k)

Needs root and tracefs mounted at /sys/kernel/tracing (profile-wharfd.sh mounts it).
"""

import os
import subprocess
import sys

TRACEFS = "/sys/kernel/tracing"
# One group per run (profile-wharfd.sh sets it), so a run can start while the kernel
# still removes an earlier run's probes.
GROUP = os.environ.get("FUNCTION_PROFILE_GROUP", "wharf_profile")


def ensure_tracefs():
    if not os.path.exists(os.path.join(TRACEFS, "uprobe_events")):
        sys.exit(f"function-profile: no {TRACEFS}/uprobe_events: mount tracefs there "
                 f"(mount -t tracefs nodev {TRACEFS}) and run as root")


def functions(binary):
    """(file offset, symbol) of every defined function, one symbol per address."""
    loads = []
    headers = subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True, check=True)
    for line in headers.stdout.splitlines():
        fields = line.split()
        if fields and fields[0] == "LOAD":
            offset, vaddr, _paddr, _filesz, memsz = (int(f, 16) for f in fields[1:6])
            loads.append((vaddr, offset, memsz))
    symbols = subprocess.run(["nm", "-S", binary], capture_output=True, text=True, check=True)
    seen = set()
    for line in symbols.stdout.splitlines():
        fields = line.split()
        if len(fields) != 4 or fields[2] not in "tTwW" or int(fields[1], 16) == 0:
            continue
        vaddr = int(fields[0], 16)
        if vaddr in seen:
            continue
        seen.add(vaddr)
        for start, offset, size in loads:
            if start <= vaddr < start + size:
                yield vaddr - start + offset, fields[3]
                break


def register(binary):
    ensure_tracefs()
    binary = os.path.realpath(binary)
    names = []
    # One write per probe: the kernel rejects a definition split across two writes.
    fd = os.open(os.path.join(TRACEFS, "uprobe_events"), os.O_WRONLY | os.O_APPEND)
    try:
        for index, (offset, name) in enumerate(functions(binary)):
            os.write(fd, f"p:{GROUP}/f{index} {binary}:0x{offset:x}\n".encode())
            names.append(name)
    finally:
        os.close(fd)
    with open(os.path.join(TRACEFS, "tracing_on"), "w") as f:
        f.write("0")  # count hits (uprobe_profile) without recording events
    with open(os.path.join(TRACEFS, "events", GROUP, "enable"), "w") as f:
        f.write("1")
    with open(names_file(), "w") as f:
        f.write("\n".join(names) + "\n")
    print(f"function-profile: {len(names)} probes on {binary}", file=sys.stderr)


def names_file():
    return os.environ.get("FUNCTION_PROFILE_NAMES", "/tmp/wharf-function-profile.names")


def snapshot(path):
    with open(os.path.join(TRACEFS, "uprobe_profile")) as src, open(path, "w") as dst:
        dst.write(src.read())


def hits(path):
    counts = {}
    for line in open(path):
        fields = line.split()
        if len(fields) == 3 and fields[1].startswith("f") and int(fields[2]) > 0:
            counts[int(fields[1][1:])] = int(fields[2])
    return counts


def order(start_path, end_path, out):
    names = open(names_file()).read().split()
    start, end = hits(start_path), hits(end_path)
    ranked = sorted(start, key=lambda i: -start[i])
    ranked += sorted((i for i in end if i not in start), key=lambda i: -end[i])
    with open(out, "w") as f:
        f.write("\n".join(names[i] for i in ranked) + "\n")
    print(f"function-profile: {len(start)} functions at start-up, {len(ranked)} in all -> {out}",
          file=sys.stderr)


def clear():
    enable = os.path.join(TRACEFS, "events", GROUP, "enable")
    if os.path.exists(enable):
        with open(enable, "w") as f:
            f.write("0")
    lines = open(os.path.join(TRACEFS, "uprobe_events")).read().splitlines()
    fd = os.open(os.path.join(TRACEFS, "uprobe_events"), os.O_WRONLY | os.O_APPEND)
    try:
        for line in lines:
            if line.startswith(f"p:{GROUP}/"):
                os.write(fd, f"-:{line[2:].split()[0]}\n".encode())
    finally:
        os.close(fd)


def main(argv):
    commands = {"register": (register, 1), "snapshot": (snapshot, 1), "order": (order, 3),
                "clear": (clear, 0)}
    if len(argv) < 2 or argv[1] not in commands or len(argv) - 2 != commands[argv[1]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    commands[argv[1]][0](*argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
