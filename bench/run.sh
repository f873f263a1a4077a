#!/usr/bin/env bash
# jwtproxy load benchmark against the upstream alone and peer proxies, one command.
#
#   bench/run.sh            full run: installs what is missing (apt), starts on 127.0.0.1
#                           the upstream (nginx), nginx plain proxy, HAProxy jwt_verify,
#                           Apache + mod_auth_openidc and jwtproxy, checks each with
#                           curl, drives each with wrk, prints a markdown table (~6 min;
#                           ~10 min with PACED)
#   bench/run.sh --stop     stop what an earlier KEEP_RUNNING=1 run left running
#   bench/run.sh --smoke    (or SMOKE=1) ~3 s per path against a Python upstream +
#                           jwtproxy only; no apt; wrk if present, else a bounded Python
#                           load loop; exits 1 unless jwtproxy's valid paths are all 2xx
#                           and its bad-signature path all 401 (CI)
#   PACED=8000 bench/run.sh      also runs paced (fixed-rate) loads at 8000 rps
#   PACED=half bench/run.sh      ... at half of HAProxy's median max rps measured just before
#   PACED=5000 PACED_ONLY=1 ...  only the paced runs
#
# Load paths (wrk -t1 -c32, WARMUP s discarded then DURATION s, ROUNDS rounds with the
# system order reversed on even rounds):
#   valid     one valid token on every request (a verifier's cache hits)
#   distinct  a different valid token on every request (DISTINCT_TOKENS of them, distinct
#             jti; consecutive runs continue the cycle): every request pays a signature check
#   invalid   a token with a bad signature (the 401 path)
# direct and nginx_proxy have no auth and run only the valid path.
#
# Settings (environment):
#   SYSTEMS="direct nginx_proxy haproxy_jwt apache_oidc jwtproxy nginx_fwdauth"
#   DURATION=10 WARMUP=2 ROUNDS=2 WRK_THREADS=1 WRK_CONNS=32 SETTLE=1
#   DISTINCT_TOKENS=30000  PACED= PACED_ONLY=0 PACED_PATHS="valid distinct"
#   PROXY_WORKERS=2 UPSTREAM_WORKERS=1 UPSTREAM_IMPL=nginx|python JWKS_SOURCE=uri|file
#   JWTPROXY_CMD="python3 -m jwtproxy"  PYTHON=/path/to/python  SKIP_INSTALL=1  KEEP_RUNNING=1
#   STATUS_COUNTS=1   (default interpreter: a venv on /usr/bin/python3 when present; see below)
#   LOADER=wrk|pyload (pyload: bench/pyload.py, used anyway when wrk is missing)
#   ports: UPSTREAM_PORT=18080 UPSTREAM_TLS_PORT=18443 NGINX_PORT=18081 HAPROXY_PORT=18082
#          APACHE_PORT=18083 JWTPROXY_PORT=18084 JWTPROXY_ADMIN_PORT=19094
# Run state (keys, tokens, configs, pid files, logs): bench/run/ (git-ignored).
# Results: bench/results/<UTC>/{results.jsonl,summary.json,table.md,checks.txt,settings.txt,wrk-*.txt}
# Everything it starts is stopped on exit, also on error or Ctrl-C (by pid file).
set -euo pipefail

SMOKE="${SMOKE:-0}"
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=1 ;;
    --stop) STOP_ONLY=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

if [[ "$SMOKE" == 1 ]]; then
  : "${SYSTEMS:=direct jwtproxy}" "${DURATION:=3}" "${WARMUP:=1}" "${ROUNDS:=1}"
  : "${DISTINCT_TOKENS:=2000}" "${UPSTREAM_IMPL:=python}" "${STATUS_COUNTS:=1}"
  : "${PYLOAD_COUNT:=2000}"
  SKIP_INSTALL=1
fi

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The interpreter jwtproxy runs on: $PYTHON when given; otherwise, outside smoke runs, an
# optimised CPython when one is present (Debian's /usr/bin/python3 is built with PGO and LTO,
# like the official python image; a pyenv build without them runs jwtproxy ~16% slower), in
# a venv of its own under bench/run/ with jwtproxy installed editable (so the tree's code
# runs) plus uvloop. JWTPROXY_CMD, when set, wins over both.
JWTPROXY_PY="${PYTHON:-}"
if [[ -z "$JWTPROXY_PY" && "$SMOKE" != 1 && -z "${JWTPROXY_CMD:-}" && -x /usr/bin/python3 ]] &&
    /usr/bin/python3 -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  venv_dir="$BENCH_RUN/venv-system-python"
  if [[ ! -x "$venv_dir/bin/python" ]]; then
    log "creating $venv_dir (jwtproxy on /usr/bin/python3)"
    /usr/bin/python3 -m venv "$venv_dir" || die "could not create $venv_dir"
  fi
  # every run: the tree's dependencies may have changed since the venv was made
  "$venv_dir/bin/pip" install -q -e "$ROOT[fast]" >&2 || die "could not install jwtproxy into $venv_dir"
  JWTPROXY_PY="$venv_dir/bin/python"
fi
JWTPROXY_PY="${JWTPROXY_PY:-$PY}"
JWTPROXY_CMD="${JWTPROXY_CMD:-$JWTPROXY_PY -m jwtproxy}"
source "$BENCH_DIR/systems.sh"

SYSTEMS="${SYSTEMS:-direct nginx_proxy haproxy_jwt apache_oidc jwtproxy nginx_fwdauth}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
ROUNDS="${ROUNDS:-2}"
WRK_THREADS="${WRK_THREADS:-1}"
WRK_CONNS="${WRK_CONNS:-32}"
SETTLE="${SETTLE:-1}"
DISTINCT_TOKENS="${DISTINCT_TOKENS:-30000}"
PACED="${PACED:-}"
PACED_ONLY="${PACED_ONLY:-0}"
PACED_PATHS="${PACED_PATHS:-valid distinct}"
STATUS_COUNTS="${STATUS_COUNTS:-0}"
PYLOAD_COUNT="${PYLOAD_COUNT:-100000000}"
ALL_SYSTEMS="direct nginx_proxy haproxy_jwt apache_oidc jwtproxy nginx_fwdauth"
BAD_TOKENS=(expired badsig tampered wrong_iss wrong_aud no_exp alg_none hs256_confusion garbage)

# stop_all: everything a run of this script may have started (by pid file).
stop_all() {
  local s
  for s in nginx_fwdauth jwtproxy apache_oidc haproxy_jwt nginx_proxy; do stop_system "$s"; done
  stop_pidfile "$BENCH_RUN/upstream/upstream.pid" upstream.py upstream.py
  stop_pidfile "$BENCH_RUN/upstream/nginx.pid" "upstream nginx" nginx
}
if [[ "${STOP_ONLY:-0}" == 1 ]]; then stop_all; exit 0; fi

# ---------------------------------------------------------------- install
install_missing() {
  local pkgs=() missing=() p s tmp_policy=""
  for s in $SYSTEMS; do
    case "$s" in
      direct) [[ "$UPSTREAM_IMPL" == nginx ]] && pkgs+=(nginx) ;;
      nginx_proxy|nginx_fwdauth) pkgs+=(nginx) ;;
      haproxy_jwt) pkgs+=(haproxy) ;;
      apache_oidc) pkgs+=(apache2 libapache2-mod-auth-openidc) ;;
    esac
  done
  pkgs+=(wrk curl)
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || { log "apt packages already installed"; return 0; }
  log "apt-get install ${missing[*]}"
  # no system services: Debian's policy-rc.d (exit 101) keeps apt from starting them
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    tmp_policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$tmp_policy"; chmod +x "$tmp_policy"
  fi
  if ! apt-cache policy haproxy 2>/dev/null | grep -q 'Candidate: [0-9]'; then apt-get update -q >&2; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 || {
    apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
  [[ -z "$tmp_policy" ]] || rm -f "$tmp_policy"
}

[[ "${SKIP_INSTALL:-0}" == 1 ]] || install_missing
"$PY" -c 'import cryptography, joserfc, aiohttp' 2>/dev/null ||
  die "python packages missing: run 'pip install -e .' in $ROOT (cryptography, joserfc, aiohttp)"

# ---------------------------------------------------------------- keys, output, cleanup
mkdir -p "$BENCH_RUN"
"$PY" "$BENCH_DIR/gen_keys.py" --out "$KEYS_DIR" --iss "$JWT_ISS" --aud "$JWT_AUD" --kid "$JWT_KID" \
  --distinct "$DISTINCT_TOKENS" >&2
OUT="$BENCH_DIR/results/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
RES="$OUT/results.jsonl"; : >"$RES"

cleanup() {
  local rc=$?
  if [[ "${KEEP_RUNNING:-0}" == 1 ]]; then log "KEEP_RUNNING=1: leaving the systems running"; else stop_all; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
stop_all   # leftovers of an interrupted earlier run (pid files under bench/run/)

LOADER="${LOADER:-wrk}"   # wrk | pyload (bench/pyload.py)
if [[ "$LOADER" == wrk ]] && ! have wrk; then
  [[ "$SMOKE" == 1 ]] || log "wrk not found: falling back to the Python load loop (numbers not comparable)"
  LOADER=pyload
fi

# ---------------------------------------------------------------- start + check
start_system direct || die "the upstream did not start"
STARTED=()
for s in $SYSTEMS; do
  [[ " $ALL_SYSTEMS " == *" $s "* ]] || die "unknown system $s (known: $ALL_SYSTEMS)"
  [[ "$s" == direct ]] && { STARTED+=(direct); continue; }
  if start_system "$s"; then STARTED+=("$s"); log "$s up on ${URL[$s]} (pid $(cat "${PIDF[$s]}"))"
  else echo "$s: did not start" >>"$OUT/checks.txt"; log "$s did not start: not benchmarked"; fi
done

# check_system NAME: valid -> 200 (and one distinct token -> 200, sub forwarded as
# X-Auth-Subject), missing and every bad token -> 401. Prints one line; 1 on a surprise.
check_system() {
  local name="$1" url="${URL[$1]}" code bad=0 t line
  line="$name:"
  code=$(http_code "$url" "$(tok valid)"); line+=" valid=$code"; [[ "$code" == 200 ]] || bad=1
  if [[ "${AUTH[$name]}" == yes ]]; then
    code=$(http_code "$url" "$(sed -n '$p' "$KEYS_DIR/distinct.txt")"); line+=" distinct=$code"; [[ "$code" == 200 ]] || bad=1
    t=$(http_body "${url}whoami" "$(tok valid)" | tr -d '\n'); line+=" X-Auth-Subject=${t:-none}"; [[ "$t" == bench-user ]] || bad=1
    code=$(http_code "$url"); line+=" missing=$code"; [[ "$code" == 401 ]] || bad=1
    for t in "${BAD_TOKENS[@]}"; do
      code=$(http_code "$url" "$(tok "$t")"); line+=" $t=$code"; [[ "$code" == 401 ]] || bad=1
    done
  fi
  ((bad)) && line+="  <-- UNEXPECTED"
  echo "$line"
  return "$bad"
}

RUN_SYSTEMS=()
for s in "${STARTED[@]}"; do
  if check_system "$s" | tee -a "$OUT/checks.txt" >&2; then RUN_SYSTEMS+=("$s")
  else log "$s FAILED the functional check: not benchmarked"; fi
done

{
  echo "host: $(nproc) cores, $(uname -r), $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "settings: loader=$LOADER -t$WRK_THREADS -c$WRK_CONNS -d${DURATION}s (warm-up ${WARMUP}s) rounds=$ROUNDS" \
    "proxy workers=$PROXY_WORKERS upstream=$UPSTREAM_IMPL/$UPSTREAM_WORKERS distinct tokens=$DISTINCT_TOKENS" \
    "paced=${PACED:-no} smoke=$SMOKE"
  echo "systems: ${RUN_SYSTEMS[*]}"
  have nginx && echo "nginx: $(nginx -v 2>&1 | sed 's/.*version: //')"
  have haproxy && echo "haproxy: $(haproxy -v 2>/dev/null | head -1)"
  have apache2 && echo "apache: $(apache2 -v 2>/dev/null | head -1 | sed 's/Server version: //')" \
    "mod_auth_openidc $(dpkg-query -W -f='${Version}' libapache2-mod-auth-openidc 2>/dev/null)"
  have wrk && echo "wrk: $(dpkg-query -W -f='${Version}' wrk 2>/dev/null)"
  echo "jwtproxy: $(git -C "$ROOT" log -1 --format='%h %cI' 2>/dev/null) command: $JWTPROXY_CMD"
  echo "interpreter: $("$JWTPROXY_PY" -c 'import platform, sys, sysconfig; print(sys.executable, platform.python_version(), platform.python_compiler(), "configure:", sysconfig.get_config_var("CONFIG_ARGS") or "-")' 2>/dev/null)"
} | tee "$OUT/settings.txt" >&2

# ---------------------------------------------------------------- load
declare -A OFFSET
# bench_one NAME PATH ROUND [RATE]: one bounded load run; appends a record to $RES
# (PATH warmup: discarded).
bench_one() {
  local name="$1" path="$2" round="$3" rate="${4:-}" mode=closed dur="$DURATION"
  local log srv up cpu0 cpu1 up0 up1 m0 m1 cache0="" cache1="" n off=""
  local -a hdr=() envs=(BENCH_THREADS="$WRK_THREADS" BENCH_STATUS="$STATUS_COUNTS")
  [[ -n "$rate" ]] && { mode="paced@$rate"; envs+=(BENCH_RATE="$rate"); }
  [[ "$path" == warmup ]] && dur="$WARMUP"
  log="$OUT/wrk-$name-$path-${mode/@/}-r$round.txt"
  case "$path" in
    valid|warmup) hdr=(-H "Authorization: Bearer $(tok valid)") ;;
    invalid) hdr=(-H "Authorization: Bearer $(tok badsig)") ;;
    distinct) off="${OFFSET[$name]:-0}"; envs+=(BENCH_TOKENS="$KEYS_DIR/distinct.txt" BENCH_OFFSET="$off") ;;
  esac
  srv="$(system_pids "$name")" || { log "$name is not running"; return 0; }
  srv="${srv//$'\n'/ }"
  up=""; [[ "$name" == direct ]] || up="$(pidfile_pid "${PIDF[direct]}" || true)"
  [[ "$name" == jwtproxy ]] && cache0="$("$PY" "$BENCH_DIR/record.py" scrape "$JWTPROXY_METRICS")"
  # shellcheck disable=SC2086 # srv: one pid, or two for a two-process system
  cpu0="$("$PY" "$BENCH_DIR/proc.py" cpu $srv)"; up0="$("$PY" "$BENCH_DIR/proc.py" cpu $up)"
  m0="$("$PY" "$BENCH_DIR/proc.py" machine)"
  local TIMEFORMAT='%U %S'
  if [[ "$LOADER" == wrk ]]; then
    { time env "${envs[@]}" timeout --foreground $((dur + 15)) wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${dur}s" \
        --latency -s "$BENCH_DIR/bench.lua" "${hdr[@]}" "${URL[$name]}" >"$log" 2>&1; } 2>"$log.time" || true
  else
    local -a py=(--count "$PYLOAD_COUNT" --concurrency "$WRK_CONNS" --duration "$dur")
    case "$path" in
      valid|warmup) py+=(--token "$(tok valid)") ;;
      invalid) py+=(--token "$(tok badsig)") ;;
      distinct) py+=(--tokens "$KEYS_DIR/distinct.txt" --offset "$off") ;;
    esac
    { time timeout --foreground $((dur + 30)) "$PY" "$BENCH_DIR/pyload.py" "${URL[$name]}" "${py[@]}" >"$log" 2>&1; } 2>"$log.time" || true
  fi
  m1="$("$PY" "$BENCH_DIR/proc.py" machine)"
  # shellcheck disable=SC2086
  cpu1="$("$PY" "$BENCH_DIR/proc.py" cpu $srv)"; up1="$("$PY" "$BENCH_DIR/proc.py" cpu $up)"
  [[ "$name" == jwtproxy ]] && cache1="$("$PY" "$BENCH_DIR/record.py" scrape "$JWTPROXY_METRICS")"
  n="$(grep -o '"requests":[0-9]*' "$log" | tail -1 | cut -d: -f2)"
  [[ "$path" == distinct ]] && OFFSET[$name]=$(((off + ${n:-0}) % DISTINCT_TOKENS))
  if [[ "$path" != warmup ]]; then
    "$PY" "$BENCH_DIR/record.py" make system="$name" path="$path" mode="$mode" round="$round" \
      rate="$rate" threads="$WRK_THREADS" conns="$WRK_CONNS" log="$log" \
      cpu0="$cpu0" cpu1="$cpu1" up0="$up0" up1="$up1" m0="$m0" m1="$m1" wrkcpu="$(tail -1 "$log.time")" \
      rss="$("$PY" "$BENCH_DIR/proc.py" rss $srv)" cache0="$cache0" cache1="$cache1" \
      offset="$off" ntokens="$([[ "$path" == distinct ]] && echo "$DISTINCT_TOKENS")" >>"$RES"
  fi
  sleep "$SETTLE"
}

paths_of() { if [[ "${AUTH[$1]}" == yes ]]; then echo "valid distinct invalid"; else echo valid; fi; }

# rounds RATE: ROUNDS rounds over RUN_SYSTEMS, reversed order on even rounds.
rounds() {
  local rate="$1" r i s p order
  for ((r = 1; r <= ROUNDS; r++)); do
    order=("${RUN_SYSTEMS[@]}")
    if ((r % 2 == 0)); then order=(); for ((i = ${#RUN_SYSTEMS[@]} - 1; i >= 0; i--)); do order+=("${RUN_SYSTEMS[i]}"); done; fi
    for s in "${order[@]}"; do
      bench_one "$s" warmup "$r" "$rate"
      for p in $(paths_of "$s"); do
        if [[ -z "$rate" || " $PACED_PATHS " == *" $p "* ]]; then bench_one "$s" "$p" "$r" "$rate"; fi
      done
    done
  done
}

((${#RUN_SYSTEMS[@]})) || die "no system passed its checks"
if [[ "$SMOKE" == 1 && " ${RUN_SYSTEMS[*]} " != *" jwtproxy "* ]]; then
  die "smoke: jwtproxy did not start or failed its checks (see $OUT/checks.txt)"
fi
[[ "$PACED_ONLY" == 1 && -n "$PACED" ]] || rounds ""
if [[ -n "$PACED" ]]; then
  rate="$PACED"
  if [[ "$PACED" == half ]]; then
    rate="$("$PY" "$BENCH_DIR/summarize.py" "$RES" --half-of haproxy_jwt)" ||
      die "PACED=half needs closed-loop haproxy_jwt valid-path runs in this session"
  fi
  log "paced runs at $rate rps"
  rounds "$rate"
fi

# ---------------------------------------------------------------- report
echo
"$PY" "$BENCH_DIR/summarize.py" "$RES" --out "$OUT"
echo
echo "results: $OUT"
if [[ "$SMOKE" == 1 ]]; then
  "$PY" "$BENCH_DIR/summarize.py" "$RES" --require jwtproxy:valid,distinct,invalid ||
    die "smoke: jwtproxy's load runs had unexpected statuses"
  log "smoke ok: jwtproxy valid and distinct paths all 2xx, bad-signature path all 401"
fi
