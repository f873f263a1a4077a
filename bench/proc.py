#!/usr/bin/env python3
"""Process accounting from /proc for bench/run.sh (Linux only, stdlib only).

  proc.py cpu PID...    CPU ticks (utime+stime, all threads) used so far by the
                        PIDs and all their live descendants: "<ticks> <clk_tck>"
  proc.py machine       busy, total and steal jiffies of the whole machine
  proc.py rss PID...    memory of the PIDs and their descendants right now:
                        "<rss_kib> <pss_kib> <nprocs>" (RSS summed over processes,
                        so shared pages count once per process; PSS shares them out)
  proc.py tree PID...   the live descendants of the PIDs, one per line
"""
from __future__ import annotations

import os
import sys


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime+stime ticks) of pid, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    rest = s[s.rindex(")") + 2 :].split()
    # after the comm: state ppid ... utime(14) stime(15), 1-based in proc(5)
    return int(rest[1]), int(rest[11]) + int(rest[12])


def _procs() -> dict[int, tuple[int, int]]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st:
                out[int(d)] = st
    return out


def _tree(roots: set[int], procs: dict[int, tuple[int, int]]) -> set[int]:
    keep = {r for r in roots if r in procs}
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _) in procs.items():
            if ppid in keep and pid not in keep:
                keep.add(pid)
                changed = True
    return keep


def _kib(pid: int, path: str, field: str) -> int:
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main(argv: list[str]) -> int:
    cmd, args = (argv[0], argv[1:]) if argv else ("", [])
    if cmd == "machine":
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]
        steal = v[7] if len(v) > 7 else 0
        print(sum(v) - idle, sum(v), steal)
        return 0
    if cmd not in ("cpu", "rss", "tree"):
        print(__doc__, file=sys.stderr)
        return 2
    roots = {int(p) for p in args if p.isdigit()}
    procs = _procs()
    pids = _tree(roots, procs)
    if cmd == "cpu":
        print(sum(procs[p][1] for p in pids), os.sysconf("SC_CLK_TCK"))
    elif cmd == "rss":
        rss = sum(_kib(p, "status", "VmRSS") for p in pids)
        pss = sum(_kib(p, "smaps_rollup", "Pss") for p in pids)
        print(rss, pss, len(pids))
    else:
        for p in sorted(pids - roots):
            print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
