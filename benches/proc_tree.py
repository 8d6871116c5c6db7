"""Runs a command and measures its whole process tree (a JVM its launcher started
included): peak resident memory (the sum over the tree, sampled every 200 ms), CPU
seconds (user + system of every process of the tree, sampled, plus what the waited-for
ones reported) and wall seconds. Writes them as JSON to OUT.

Usage: proc_tree.py OUT -- COMMAND [ARG...]
"""

import json
import os
import resource
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def children():
    """Parent pid -> child pids, from /proc."""
    tree = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def sample(root):
    """(resident bytes, CPU seconds) of root and its descendants now."""
    tree = children()
    todo, rss, cpu = [root], 0, 0.0
    while todo:
        pid = todo.pop()
        todo.extend(tree.get(pid, []))
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/statm") as f:
                rss += int(f.read().split()[1]) * PAGE
        except OSError:
            continue
        # utime, stime, cutime, cstime (fields 14 to 17 of stat; here from index 11).
        cpu += sum(int(x) for x in fields[11:15]) / TICK
    return rss, cpu


def main():
    out, command = sys.argv[1], sys.argv[sys.argv.index("--") + 1 :]
    started = time.time()
    child = subprocess.Popen(command)
    peak, cpu = 0, 0.0
    while child.poll() is None:
        rss, used = sample(child.pid)
        peak, cpu = max(peak, rss), max(cpu, used)
        time.sleep(0.2)
    wall = time.time() - started
    # The reaped command and whatever it waited for, which the last sample may have missed.
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = max(cpu, reaped.ru_utime + reaped.ru_stime)
    with open(out, "w") as f:
        json.dump({"peak_rss_mib": round(peak / 2**20, 1), "cpu_seconds": round(cpu, 2), "wall_seconds": round(wall, 2),
                   "exit": child.returncode}, f)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
