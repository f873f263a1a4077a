#!/usr/bin/env python3
"""Result records for bench/run.sh.

  record.py scrape URL
      print "<hits> <misses>" of jwtproxy_token_cache_total from a Prometheus
      text endpoint (summed over label sets; "0 0" if absent or unreachable)
  record.py make key=value ...
      turn one load run's raw measurements into a JSON line (stdout) and a
      progress line (stderr). Keys: system path mode round rate threads conns
      log cpu0 cpu1 up0 up1 m0 m1 wrkcpu rss cache0 cache1 offset ntokens

Record fields: rps; p50_us/p90_us/p99_us/p999_us (wrk's latency, closed loop:
see README); cpu_server (cores used by the system under test: master and all
descendants), us_per_req (its CPU microseconds per request), cpu_upstream,
cpu_wrk, machine_busy, steal, cpu_other (cores busy with anything else: noise);
rss_kib/pss_kib of the system under test at the end of the run; non2xx;
socket_errors; status (per code, when counted);
cache_hits/cache_misses (jwtproxy only); status_ok: valid and distinct paths
all 2xx, invalid path all 401 (or all >= 400 when codes are not counted).
"""
from __future__ import annotations

import json
import os
import re
import sys
import urllib.request
from typing import Any

_CACHE_RE = re.compile(
    r'^jwtproxy_token_cache_total\{[^}]*result="(hit|miss)"[^}]*\}\s+([0-9.eE+]+)', re.M)


def scrape(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except Exception:
        return "0 0"
    tot = {"hit": 0.0, "miss": 0.0}
    for kind, val in _CACHE_RE.findall(text):
        tot[kind] += float(val)
    return f"{int(tot['hit'])} {int(tot['miss'])}"


def _ints(s: str) -> list[int]:
    return [int(float(x)) for x in s.split()] if s.strip() else []


def make(kv: dict[str, str]) -> dict[str, Any]:
    path = kv["path"]
    rec: dict[str, Any] = {
        "system": kv["system"], "path": path, "mode": kv.get("mode", "closed"),
        "round": int(kv["round"]), "threads": int(kv["threads"]), "conns": int(kv["conns"]),
    }
    if kv.get("rate"):
        rec["target_rps"] = float(kv["rate"])
    w = None
    with open(kv["log"], errors="replace") as f:
        for line in f:
            if line.startswith("WRKJSON "):
                w = json.loads(line[8:])
    if w is None or not w.get("requests"):
        rec.update(w or {})
        rec["error"] = f"no requests completed (see {kv['log']})"
        rec["status_ok"] = False
        return rec
    rec.update(w)
    secs = w["duration_us"] / 1e6
    rec["rps"] = w["requests"] / secs
    cpu0, cpu1 = _ints(kv["cpu0"]), _ints(kv["cpu1"])
    hz = cpu0[1]
    rec["cpu_server"] = (cpu1[0] - cpu0[0]) / hz / secs
    rec["us_per_req"] = 1e6 * rec["cpu_server"] / rec["rps"]
    up0, up1 = _ints(kv.get("up0", "")), _ints(kv.get("up1", ""))
    rec["cpu_upstream"] = (up1[0] - up0[0]) / hz / secs if up0 and up1 else 0.0
    m0, m1 = _ints(kv["m0"]), _ints(kv["m1"])
    rec["machine_busy"] = (m1[0] - m0[0]) / max(1, m1[1] - m0[1])
    rec["steal"] = (m1[2] - m0[2]) / max(1, m1[1] - m0[1])
    try:
        us, sy = map(float, kv.get("wrkcpu", "").split()[-2:])
        rec["cpu_wrk"] = (us + sy) / secs
    except ValueError:
        pass
    # CPU the machine spent on anything but the system under test, the upstream and
    # the load generator: other work on the box, a noise indicator
    rec["cpu_other"] = max(0.0, rec["machine_busy"] * (os.cpu_count() or 1) - rec["cpu_server"]
                           - rec["cpu_upstream"] - rec.get("cpu_wrk", 0.0))
    rss = _ints(kv.get("rss", ""))
    if rss:
        rec["rss_kib"], rec["pss_kib"], rec["nprocs"] = rss
    c0, c1 = _ints(kv.get("cache0", "")), _ints(kv.get("cache1", ""))
    if c0 and c1:
        rec["cache_hits"], rec["cache_misses"] = c1[0] - c0[0], c1[1] - c0[1]
    if kv.get("ntokens"):
        rec["token_offset"], rec["tokens"] = int(kv["offset"]), int(kv["ntokens"])
        rec["token_laps"] = w["requests"] / int(kv["ntokens"])
    rec["non2xx"] = w["err_status"]
    rec["socket_errors"] = w["err_connect"] + w["err_read"] + w["err_write"] + w["err_timeout"]
    status = {int(k): v for k, v in (w.get("status") or {}).items()}
    if status:
        good = (sum(v for k, v in status.items() if 200 <= k < 300) if path != "invalid"
                else status.get(401, 0))
        rec["status_ok"] = good == sum(status.values())
    elif path == "invalid":
        rec["status_ok"] = w["err_status"] == w["requests"]
    else:
        rec["status_ok"] = w["err_status"] == 0
    return rec


def progress(r: dict[str, Any]) -> str:
    if "rps" not in r:
        return f"[bench] {r['system']:<12} {r['path']:<8} r{r['round']}  ERROR {r.get('error')}"
    extra = ""
    if "cache_hits" in r:
        extra += f"  cache hit {r['cache_hits']} miss {r['cache_misses']}"
    if not r["status_ok"]:
        extra += f"  STATUS-MISMATCH non2xx={r['non2xx']} {r.get('status', '')}"
    return (f"[bench] {r['system']:<12} {r['path']:<8} {r['mode']:<12} r{r['round']} "
            f"{r['rps']:9.0f} rps  p50 {r['p50_us'] / 1e3:6.2f} ms  "
            f"p99 {r['p99_us'] / 1e3:6.2f} ms  "
            f"cpu {r['us_per_req']:6.1f} us/req ({r['cpu_server']:.2f} cores, up "
            f"{r['cpu_upstream']:.2f}, wrk {r.get('cpu_wrk', 0):.2f})  "
            f"rss {r.get('rss_kib', 0) / 1024:.0f} MB  other {r['cpu_other']:.2f} "
            f"steal {100 * r['steal']:.0f}%"
            f"{extra}")


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "scrape":
        print(scrape(argv[1]))
        return 0
    if argv and argv[0] == "make":
        kv = dict(a.split("=", 1) for a in argv[1:])
        rec = make(kv)
        print(json.dumps(rec))
        print(progress(rec), file=sys.stderr)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
