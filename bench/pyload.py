#!/usr/bin/env python3
"""Bounded load loop with aiohttp, used by bench/run.sh when wrk is not installed
(smoke mode in CI). Prints the same "WRKJSON {...}" line as bench.lua, with
per-status counts. Sends at most --count requests and stops after --duration
seconds, whichever comes first.

usage: pyload.py URL [--token T | --tokens FILE [--offset N]] [--count 2000]
                 [--concurrency 16] [--duration 3]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter

import aiohttp


def pct(sorted_us: list[int], p: float) -> int:
    if not sorted_us:
        return 0
    return sorted_us[min(len(sorted_us) - 1, int(len(sorted_us) * p / 100))]


async def run(a: argparse.Namespace) -> dict[str, object]:
    if a.tokens:
        with open(a.tokens) as f:
            tokens = [t for t in f.read().split("\n") if t]
    else:
        tokens = [a.token] if a.token else [""]
    lat: list[int] = []
    status: Counter[int] = Counter()
    errors = Counter[str]()
    nbytes = 0
    next_i = 0
    t0 = time.monotonic()
    deadline = t0 + a.duration

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_i, nbytes
        while next_i < a.count and time.monotonic() < deadline:
            tok = tokens[(a.offset + next_i) % len(tokens)]
            next_i += 1
            headers = {"Authorization": f"Bearer {tok}"} if tok else {}
            s = time.monotonic()
            try:
                async with session.get(a.url, headers=headers) as r:
                    nbytes += len(await r.read())
                    status[r.status] += 1
            except TimeoutError:
                errors["timeout"] += 1
                continue
            except aiohttp.ClientError:
                errors["read"] += 1
                continue
            lat.append(int((time.monotonic() - s) * 1e6))

    timeout = aiohttp.ClientTimeout(total=5)
    conn = aiohttp.TCPConnector(limit=a.concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:
        await asyncio.gather(*(worker(session) for _ in range(a.concurrency)))
    elapsed = time.monotonic() - t0
    lat.sort()
    return {
        "requests": sum(status.values()), "duration_us": int(elapsed * 1e6), "bytes": nbytes,
        "err_connect": 0, "err_read": errors["read"], "err_write": 0,
        "err_status": sum(n for code, n in status.items() if code > 399),
        "err_timeout": errors["timeout"],
        "lat_mean_us": sum(lat) / len(lat) if lat else 0, "lat_max_us": lat[-1] if lat else 0,
        "p50_us": pct(lat, 50), "p90_us": pct(lat, 90), "p99_us": pct(lat, 99),
        "p999_us": pct(lat, 99.9), "status": {str(k): v for k, v in status.items()},
        "loader": "pyload",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("url")
    ap.add_argument("--token", default="")
    ap.add_argument("--tokens")
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--duration", type=float, default=3.0)
    a = ap.parse_args()
    print("WRKJSON " + json.dumps(asyncio.run(run(a))), flush=True)


if __name__ == "__main__":
    main()
