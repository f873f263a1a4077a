# shellcheck shell=bash
# Common settings and helpers for bench/run.sh (sourced, not run).
# Everything listens on 127.0.0.1 only; all run-time state (keys, tokens,
# configs, pid files, logs) lives under $BENCH_RUN (default bench/run/, git-ignored).

umask 022   # nginx workers (nobody) and apache workers (www-data) read files under run/
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
BENCH_RUN="${BENCH_RUN:-$BENCH_DIR/run}"
KEYS_DIR="$BENCH_RUN/keys"
PY="${PY:-python3}"

# Ports (loopback only).
UPSTREAM_PORT="${UPSTREAM_PORT:-18080}"         # tiny upstream (+ /jwks.json)
UPSTREAM_TLS_PORT="${UPSTREAM_TLS_PORT:-18443}" # nginx upstream, https, /jwks.json only (mod_auth_openidc wants https)
NGINX_PORT="${NGINX_PORT:-18081}"               # nginx plain reverse proxy, no auth
HAPROXY_PORT="${HAPROXY_PORT:-18082}"           # HAProxy 2.6 jwt_verify
APACHE_PORT="${APACHE_PORT:-18083}"             # Apache 2.4 + mod_auth_openidc (oauth20)
JWTPROXY_PORT="${JWTPROXY_PORT:-18084}"         # jwtproxy
JWTPROXY_ADMIN_PORT="${JWTPROXY_ADMIN_PORT:-19094}"
FWDAUTH_PORT="${FWDAUTH_PORT:-18085}"                   # nginx auth_request -> jwtproxy forward-auth
FWDAUTH_JWTPROXY_PORT="${FWDAUTH_JWTPROXY_PORT:-19191}" # that jwtproxy's forward_auth.listen
FWDAUTH_ADMIN_PORT="${FWDAUTH_ADMIN_PORT:-19095}"       # ... and its admin port

UPSTREAM_WORKERS="${UPSTREAM_WORKERS:-1}"
PROXY_WORKERS="${PROXY_WORKERS:-2}"   # nginx worker_processes / haproxy nbthread / apache processes / jwtproxy workers

# Claims every system checks (gen_keys.py puts the same values into the tokens).
JWT_ISS="${JWT_ISS:-https://issuer.peers.test}"
JWT_AUD="${JWT_AUD:-peer-api}"
JWT_KID="${JWT_KID:-bench-rs256-1}"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

# wait_port PORT [SECONDS]: wait until something accepts TCP on 127.0.0.1:PORT.
wait_port() {
  local port="$1" secs="${2:-10}" i
  for ((i = 0; i < secs * 10; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

# port_free PORT: true if nothing listens on 127.0.0.1:PORT.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# proc_running PID: PID exists and is not a zombie.
proc_running() {
  local st
  kill -0 "$1" 2>/dev/null || return 1
  st="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ -n "$st" && "$st" != Z && "$st" != X ]]
}

# pidfile_pid PIDFILE: the pid in PIDFILE, if it is alive.
pidfile_pid() {
  local p
  [[ -s "$1" ]] || return 1
  p="$(tr -dc '0-9' <"$1")"
  [[ -n "$p" ]] && proc_running "$p" && echo "$p"
}

# cmd_matches PID WORD: the process's command line mentions WORD (guards
# against a recycled pid in a stale pid file).
cmd_matches() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q -- "$2"; }

# stop_pidfile PIDFILE NAME WORD: stop the process named in PIDFILE (only if its
# command line mentions WORD) and the descendants it had: TERM, wait up to 15 s,
# then KILL. Servers we start are masters that take their own workers down; the
# descendant sweep only catches workers a killed master left behind.
stop_pidfile() {
  local f="$1" name="$2" word="$3" p kids k i
  p="$(pidfile_pid "$f")" || { rm -f "$f"; return 0; }
  if ! cmd_matches "$p" "$word"; then
    log "$name: pid $p in $f is not ours ($(tr '\0' ' ' <"/proc/$p/cmdline" | cut -c1-60)); leaving it alone"
    rm -f "$f"; return 0
  fi
  kids="$("$PY" "$BENCH_DIR/proc.py" tree "$p")"
  log "stopping $name (pid $p)"
  kill -TERM "$p" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do proc_running "$p" || break; sleep 0.1; done
  if proc_running "$p"; then
    log "$name did not stop on TERM, sending KILL to $p"
    kill -KILL "$p" 2>/dev/null || true
  fi
  for ((i = 0; i < 50; i++)); do
    local left=""
    for k in $kids; do proc_running "$k" && cmd_matches "$k" "$word" && left+=" $k"; done
    [[ -z "$left" ]] && break
    ((i == 49)) && { log "$name: killing leftover workers$left"; kill -KILL $left 2>/dev/null || true; }
    sleep 0.1
  done
  rm -f "$f"
}

# http_code URL [TOKEN]: print the HTTP status of GET URL (000 if no answer).
# curl when present, else Python's urllib (smoke mode needs no apt package).
http_code() {
  local url="$1" tok="${2:-}"
  if have curl; then
    if [[ -n "$tok" ]]; then
      curl -s -m 5 -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $tok" "$url" || true
    else
      curl -s -m 5 -o /dev/null -w '%{http_code}' "$url" || true
    fi
  else
    "$PY" - "$url" "$tok" <<'EOF'
import sys, urllib.error, urllib.request
url, tok = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url, headers={"Authorization": "Bearer " + tok} if tok else {})
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        print(r.status, end="")
except urllib.error.HTTPError as e:
    print(e.code, end="")
except Exception:
    print("000", end="")
EOF
  fi
}

# http_body URL [TOKEN]: print the body of GET URL.
http_body() {
  local url="$1" tok="${2:-}"
  if have curl; then
    curl -s -m 5 ${tok:+-H "Authorization: Bearer $tok"} "$url" || true
  else
    "$PY" - "$url" "$tok" <<'EOF'
import sys, urllib.request
url, tok = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url, headers={"Authorization": "Bearer " + tok} if tok else {})
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        sys.stdout.write(r.read().decode())
except Exception:
    pass
EOF
  fi
}

tok() { tr -d '\n' <"$KEYS_DIR/$1.jwt"; }
