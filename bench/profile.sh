#!/usr/bin/env bash
# Where one jwtproxy worker spends its time on one path: py-spy samples the worker while wrk
# drives it, then prints the top functions (own time) and the share of samples by category.
#
#   bench/profile.sh [valid|distinct|invalid|public] [SECONDS]
#
# Needs what bench/run.sh installs (nginx for the upstream, wrk) and py-spy (pip install
# py-spy; installed here when missing). Keys come from bench/gen_keys.py (run bench/run.sh
# once first). Listens on 127.0.0.1 only; stops only the processes it started, by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH_KIND=${1:-valid}
SECONDS_TO_SAMPLE=${2:-8}
RUN=bench/run
OUT=$RUN/profile
PROXY_PORT=18284 ADMIN_PORT=19294
mkdir -p "$OUT"
command -v py-spy >/dev/null || ${PYTHON:-python3} -m pip install -q py-spy
source bench/one_worker.sh  # its EXIT trap stops what it started
tokens=$(one_worker_tokens "$PATH_KIND")
one_worker_start "$PATH_KIND" "$PROXY_PORT" "$ADMIN_PORT" "$OUT"

if [[ $PATH_KIND == distinct ]]; then  # bench.lua sends the file's tokens in turn
  args=(-s bench/bench.lua); export BENCH_TOKENS=${BENCH_TOKENS:-$tokens}
else
  args=(-H "Authorization: Bearer $(tr -d '\n' <"$tokens")")
fi
wrk -t1 -c32 -d2s "${args[@]}" "http://127.0.0.1:$PROXY_PORT/" >/dev/null  # warm-up
wrk -t1 -c32 -d"$((SECONDS_TO_SAMPLE + 2))s" "${args[@]}" "http://127.0.0.1:$PROXY_PORT/" \
  >"$OUT/wrk.txt" &
load=$!
py-spy record --pid "$proxy" --duration "$SECONDS_TO_SAMPLE" --rate 1000 --format raw \
  --output "$OUT/$PATH_KIND.folded" --nonblocking >/dev/null 2>&1
wait "$load"
$PY - "$OUT/$PATH_KIND.folded" <<'PY'
"""Top functions by own samples, and shares by category, from py-spy's folded stacks."""
import collections
import sys

own: collections.Counter[str] = collections.Counter()
categories: collections.Counter[str] = collections.Counter()
RULES = (  # the innermost frame that matches a rule names the sample's category
    ("crypto verify", ("cryptography", "_verify_signature", "verify_signature")),
    ("jwtproxy gate/verify", ("jwtproxy/gate.py", "jwtproxy/verifier.py", "jwtproxy/jws.py",
                              "jwtproxy/extractor.py", "jwtproxy/matcher.py",
                              "jwtproxy/authorizer.py")),
    ("jwtproxy headers", ("jwtproxy/headers.py",)),
    ("jwtproxy pool/forwarder", ("jwtproxy/pool.py", "jwtproxy/forwarder.py",
                                 "jwtproxy/connection.py")),
    ("jwtproxy lean loop", ("jwtproxy/lean.py", "jwtproxy/server.py")),
    ("jwtproxy app/metrics/log", ("jwtproxy/app.py", "jwtproxy/metrics.py", "jwtproxy/log.py")),
    ("aiohttp", ("aiohttp/",)),
    ("event loop / sockets", ("asyncio/", "uvloop", "selectors")),
)
total = 0
for line in open(sys.argv[1]):
    stack, _, count = line.rstrip().rpartition(" ")
    n = int(count)
    total += n
    frames = stack.split(";")
    own[frames[-1]] += n
    category = next((name for frame in reversed(frames) for name, needles in RULES
                     if any(needle in frame for needle in needles)), "other")
    categories[category] += n
print(f"{total} samples")
print("\nshare by category (of the innermost frame that names one):")
for name, n in categories.most_common():
    print(f"  {100 * n / total:5.1f}%  {name}")
print("\ntop functions (own samples):")
for frame, n in own.most_common(25):
    print(f"  {100 * n / total:5.1f}%  {frame}")
PY
grep -E "Requests/sec|requests in|Non-2xx" "$OUT/wrk.txt"
