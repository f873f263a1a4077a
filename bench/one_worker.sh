# Sourced by bench/profile.sh and bench/instructions.sh: one jwtproxy worker (workers: 1)
# in front of the bench's nginx upstream on 127.0.0.1:18080, for one path.
#   one_worker_start KIND PROXY_PORT ADMIN_PORT OUT [launcher...]
# starts nginx when nothing serves 18080 (and refuses an upstream serving other keys),
# writes OUT/jwtproxy.yaml (KIND public adds an `auth: none` route), starts
# `[launcher...] $PY -m jwtproxy run` of this checkout (or of $SRC) and waits for /readyz. Sets $proxy; every pid it
# started is in the array `pids`, stopped by pid on exit.
RUN=${RUN:-bench/run}
PY=${PYTHON:-python3}
pids=()
one_worker_cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap one_worker_cleanup EXIT

one_worker_start() {
  local kind=$1 port=$2 admin=$3 out=$4
  shift 4
  [[ -f $RUN/keys/valid.jwt && -f $RUN/upstream/nginx.conf ]] || {
    echo "run bench/run.sh once first (keys and the upstream config)" >&2; exit 2; }
  if ! curl -fs -o /dev/null http://127.0.0.1:18080/; then
    nginx -p "$RUN/upstream" -c nginx.conf -g 'daemon off;' &
    pids+=($!)
    for _ in $(seq 100); do curl -fs -o /dev/null http://127.0.0.1:18080/ && break; sleep 0.05; done
  fi
  # the keys must be the ones the tokens were signed with (another run's upstream would not do)
  cmp -s <(curl -fs http://127.0.0.1:18080/jwks.json) "$RUN/keys/jwks.json" || {
    echo "the upstream on 127.0.0.1:18080 does not serve $RUN/keys/jwks.json" >&2; exit 2; }
  local public_route=""
  [[ $kind == public ]] && public_route='
  - name: public
    match: {path_prefix: /}
    upstream: http://127.0.0.1:18080
    auth: none'
  cat > "$out/jwtproxy.yaml" <<YAML
server: {listen: 127.0.0.1:$port, workers: 1}
admin: {listen: 127.0.0.1:$admin}
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
  # run from $out with the checkout on PYTHONPATH (`-m` would put the cwd first)
  local py; py=$(command -v "$PY")
  [[ $py == /* ]] || py=$PWD/$py  # absolute, symlinks kept (a venv's python is one)
  (cd "$out" && PYTHONPATH=${SRC:-$OLDPWD} exec "$@" "$py" -m jwtproxy run -c jwtproxy.yaml \
    >proxy.log 2>&1) &
  proxy=$!
  pids+=($proxy)
  local ready=0
  for _ in $(seq 600); do
    curl -fs -o /dev/null "http://127.0.0.1:$admin/readyz" && { ready=1; break; }
    sleep 0.05
  done
  ((ready)) || { echo "jwtproxy not ready (see $out/proxy.log)" >&2; exit 1; }
}

# The tokens of a path, one per line: one token sent again and again (valid, public,
# invalid), or 30,000 never-seen ones (distinct: more than the verified-token cache holds).
one_worker_tokens() {
  case $1 in
    valid|public) echo "$RUN/keys/valid.jwt" ;;
    invalid) echo "$RUN/keys/badsig.jwt" ;;
    distinct) echo "$RUN/keys/distinct.pool.txt" ;;
    *) echo "path: valid|invalid|public|distinct" >&2; exit 2 ;;
  esac
}
