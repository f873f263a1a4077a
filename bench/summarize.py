#!/usr/bin/env python3
"""Turn bench/run.sh records (results.jsonl) into markdown tables and summary.json.

usage: summarize.py RESULTS.jsonl [--out DIR] [--ref direct] [--subject jwtproxy]
       summarize.py RESULTS.jsonl --half-of haproxy_jwt     print half its median valid rps
       summarize.py RESULTS.jsonl --require jwtproxy:valid,distinct,invalid
                                  exit 1 unless those runs exist and all had the right statuses

Per system, path and mode (closed loop, or paced at a fixed rate), over the rounds:
rps, p50, p99 and CPU us/req are medians of the runs; RSS is the largest end-of-run
RSS of the system under test (master + workers, summed); "x direct" is the median
rps over the direct upstream's valid-path median rps in the same mode. The second
table divides the subject's figures by each peer's (same path; a peer without
auth is compared on its valid path).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics as st
import sys
from typing import Any

PATHS = ("valid", "distinct", "invalid")


def load(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def cell(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "rps" in r]
    out: dict[str, Any] = {"runs": len(runs), "status_ok": all(r.get("status_ok") for r in runs)}
    if not ok:
        return out
    rps = [r["rps"] for r in sorted(ok, key=lambda r: r["round"])]
    med = st.median(rps)
    out.update({
        "rps": med, "each_rps": rps, "spread": (max(rps) - min(rps)) / med if med else 0.0,
        "p50_ms": st.median(r["p50_us"] for r in ok) / 1e3,
        "p99_ms": st.median(r["p99_us"] for r in ok) / 1e3,
        "us_per_req": st.median(r["us_per_req"] for r in ok),
        "cores": st.mean(r["cpu_server"] for r in ok),
        "rss_mb": max(r.get("rss_kib", 0) for r in ok) / 1024,
        "pss_mb": max(r.get("pss_kib", 0) for r in ok) / 1024,
        "steal": st.mean(r.get("steal", 0) for r in ok),
        "other_cores": st.mean(r.get("cpu_other", 0) for r in ok),
        "non2xx": sum(r.get("non2xx", 0) for r in ok),
        "socket_errors": sum(r.get("socket_errors", 0) for r in ok),
    })
    if any("target_rps" in r for r in ok):
        out["target_rps"] = ok[0]["target_rps"]
    if any("cache_hits" in r for r in ok):
        hits = sum(r.get("cache_hits", 0) for r in ok)
        total = hits + sum(r.get("cache_misses", 0) for r in ok)
        out["cache_hit_ratio"] = hits / total if total else None
    return out


def group(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    keys: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        keys.setdefault((r["system"], r["path"], r.get("mode", "closed")), []).append(r)
    return {k: cell(v) for k, v in keys.items()}


def ordered(cells: dict[tuple[str, str, str], dict[str, Any]]) -> list[tuple[str, str, str]]:
    systems = list(dict.fromkeys(k[0] for k in cells))
    modes = sorted({k[2] for k in cells}, key=lambda m: (m != "closed", m))
    return [(s, p, m) for m in modes for s in systems for p in PATHS if (s, p, m) in cells]


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def status(c: dict[str, Any]) -> str:
    """HTTP statuses as expected; for a paced run also whether the rate was reached."""
    text = "ok" if c["status_ok"] else "MISMATCH"
    if "target_rps" in c and c["rps"] < 0.95 * c["target_rps"]:
        text += f", {100 * c['rps'] / c['target_rps']:.0f}% of rate"
    return text


def tables(
    cells: dict[tuple[str, str, str], dict[str, Any]], ref: str, subject: str,
) -> tuple[str, list]:
    lines = []
    lines.append("| system | path | mode | rps (median) | each run, k rps | spread | x " + ref +
                 " | p50 ms | p99 ms | CPU us/req | CPU cores | RSS MB | cache hits | other cores "
                 "| status |")
    lines.append("|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for key in ordered(cells):
        s, p, m = key
        c = cells[key]
        if "rps" not in c:
            lines.append(
                f"| {s} | {p} | {m} | - | - | - | - | - | - | - | - | - | - | - | NO DATA |")
            continue
        refc = cells.get((ref, "valid", m), {})
        hit = c.get("cache_hit_ratio")
        lines.append(
            f"| {s} | {p} | {m} | {c['rps']:,.0f} | "
            f"{'/'.join(f'{x / 1e3:.1f}' for x in c['each_rps'])} | "
            f"{100 * c['spread']:.0f}% | {ratio(c['rps'], refc.get('rps'))} | {c['p50_ms']:.2f} | "
            f"{c['p99_ms']:.2f} | {c['us_per_req']:.0f} | {c['cores']:.2f} | {c['rss_mb']:.0f} | "
            f"{'-' if hit is None else f'{100 * hit:.0f}%'} | {c['other_cores']:.2f} | "
            f"{status(c)} |")

    vs = []
    for key in ordered(cells):
        s, p, m = key
        if s != subject or "rps" not in cells[key]:
            continue
        me = cells[key]
        for (ps, pp, pm), peer in cells.items():
            if ps == subject or pm != m or "rps" not in peer:
                continue
            if pp != p and not (pp == "valid" and (ps, p, m) not in cells):
                continue
            vs.append({"path": p, "mode": m, "peer": ps, "peer_path": pp,
                       "rps_x": me["rps"] / peer["rps"],
                       "p50_x": me["p50_ms"] / peer["p50_ms"] if peer["p50_ms"] else None,
                       "p99_x": me["p99_ms"] / peer["p99_ms"] if peer["p99_ms"] else None,
                       "us_per_req_x": (me["us_per_req"] / peer["us_per_req"]
                                        if peer["us_per_req"] else None),
                       "rss_x": me["rss_mb"] / peer["rss_mb"] if peer["rss_mb"] else None})
    if vs:
        lines += ["", f"{subject} / peer (rps above 1: {subject} faster; latency, CPU and RSS "
                      f"below 1: {subject} lighter)", "",
                  f"| {subject} path | mode | peer | peer path | rps x | p50 x | p99 x "
                  "| CPU us/req x | RSS x |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|"]
        f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        for v in vs:
            lines.append(f"| {v['path']} | {v['mode']} | {v['peer']} | {v['peer_path']} | "
                         f"{f(v['rps_x'])} | {f(v['p50_x'])} | {f(v['p99_x'])} | "
                         f"{f(v['us_per_req_x'])} | {f(v['rss_x'])} |")
    return "\n".join(lines) + "\n", vs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("--out")
    ap.add_argument("--ref", default="direct")
    ap.add_argument("--subject", default="jwtproxy")
    ap.add_argument("--half-of")
    ap.add_argument("--require")
    a = ap.parse_args()
    rows = load(a.results)
    cells = group(rows)

    if a.half_of:
        c = cells.get((a.half_of, "valid", "closed"), {})
        if "rps" not in c:
            return 1
        print(int(c["rps"] / 2))
        return 0
    if a.require:
        system, _, paths = a.require.partition(":")
        bad = [p for p in paths.split(",")
               if not any(k[0] == system and k[1] == p for k in cells)
               or not all(c["status_ok"] and "rps" in c for k, c in cells.items()
                          if k[0] == system and k[1] == p)]
        for p in bad:
            print(f"{system} {p}: missing or unexpected statuses", file=sys.stderr)
        return 1 if bad else 0

    w = rows[0] if rows else {}
    rounds = max((r["round"] for r in rows), default=0)
    head = (f"wrk -t{w.get('threads')} -c{w.get('conns')}; rounds: {rounds}; "
            "medians over rounds; CPU = utime+stime of the system under test (master + workers) "
            "per request; RSS summed over its processes at the end of a run; "
            "other cores = CPU busy "
            "with anything but the system, the upstream and wrk (noise: should be near 0)")
    text, vs = tables(cells, a.ref, a.subject)
    print(head + "\n\n" + text, end="")
    if a.out:
        with open(os.path.join(a.out, "table.md"), "w") as f:
            f.write(head + "\n\n" + text)
        summary = {"header": head,
                   "groups": [dict(system=k[0], path=k[1], mode=k[2], **cells[k])
                              for k in ordered(cells)],
                   "vs_peers": vs}
        with open(os.path.join(a.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
