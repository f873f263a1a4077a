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
PY=${PYTHON:-python3}
PROXY_PORT=18284 ADMIN_PORT=19294
mkdir -p "$OUT"
command -v py-spy >/dev/null || $PY -m pip install -q py-spy
[[ -f $RUN/keys/valid.jwt && -f $RUN/upstream/nginx.conf ]] || {
  echo "run bench/run.sh once first (keys and the upstream config)" >&2; exit 2; }

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

if ! curl -fs -o /dev/null http://127.0.0.1:18080/; then
  nginx -p "$RUN/upstream" -c nginx.conf -g 'daemon off;' &
  pids+=($!)
  for _ in $(seq 100); do curl -fs -o /dev/null http://127.0.0.1:18080/ && break; sleep 0.05; done
fi
# the keys must be the ones the tokens were signed with (another run's upstream would not do)
cmp -s <(curl -fs http://127.0.0.1:18080/jwks.json) "$RUN/keys/jwks.json" || {
  echo "the upstream on 127.0.0.1:18080 does not serve $RUN/keys/jwks.json" >&2; exit 2; }
public_route=""
[[ $PATH_KIND == public ]] && public_route='
  - name: public
    match: {path_prefix: /}
    upstream: http://127.0.0.1:18080
    auth: none'
cat > "$OUT/jwtproxy.yaml" <<YAML
server: {listen: 127.0.0.1:$PROXY_PORT, workers: 1}
admin: {listen: 127.0.0.1:$ADMIN_PORT}
log: {level: warning}
issuers:
  bench:
    issuer: https://issuer.peers.test
    jwks_uri: http://127.0.0.1:18080/jwks.json
    audiences: [peer-api]
    algorithms: [RS256]
routes:$public_route
  - name: api
    match: {path_prefix: /}
    upstream: http://127.0.0.1:18080
    auth: {issuers: [bench]}
    forward: {claims: {sub: X-Auth-Subject}}
YAML
$PY -m jwtproxy run -c "$OUT/jwtproxy.yaml" >"$OUT/proxy.log" 2>&1 &
proxy=$!
pids+=($proxy)
ready=0
for _ in $(seq 200); do
  curl -fs -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" && { ready=1; break; }
  sleep 0.05
done
((ready)) || { echo "jwtproxy not ready (see $OUT/proxy.log)" >&2; exit 1; }

case $PATH_KIND in
  valid|public) args=(-H "Authorization: Bearer $(cat $RUN/keys/valid.jwt)") ;;
  invalid) args=(-H "Authorization: Bearer $(cat $RUN/keys/badsig.jwt)") ;;
  distinct) args=(-s bench/bench.lua) ; export BENCH_TOKENS=$RUN/keys/distinct.txt ;;
  *) echo "path: valid|distinct|invalid|public" >&2; exit 2 ;;
esac
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
    ("jwtproxy pool/forwarder", ("jwtproxy/pool.py", "jwtproxy/forwarder.py")),
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
