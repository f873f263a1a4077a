#!/usr/bin/env bash
# Build the jwtproxy image and run it the way the Kubernetes manifests do, with podman.
#
#   sudo deploy/container-test.sh          # or: PYTHON=.venv/bin/python deploy/container-test.sh
#
# Needs: root, podman (Debian's: rootful, runc, cgroupfs), and for the base image either
# PYTHON_IMAGE (an image podman already has or can pull, e.g. docker.io/library/python:3.11-slim-bookworm)
# or debootstrap plus the Debian mirror apt uses: the script then makes a stand-in for
# python:3.11-slim-bookworm (Debian bookworm minbase + python3, python3-venv, python3-pip, the
# /usr/local/bin/python{,3} links of the official image and this host's trust store, so that
# pip inside the build trusts what the host trusts) and keeps it for later runs.
# PYTHON must have the project's test dependencies (it mints the tokens with tests/tokens.py).
#
# Exit 0 when every check passes, 1 when one fails, 2 when the base image cannot be made.
# (podman 4.3 logs "unable to get systemd connection" for the HEALTHCHECK timer where systemd
# does not run: harmless, `podman healthcheck run` below runs the check itself.)
#
# It runs the ConfigMap config of deploy/kubernetes in a pod beside a stand-in app (which also
# serves the Cognito key set), the proxy container locked down as in deployment.yaml, and checks:
# the image (HEALTHCHECK kept, non-root 10001, no pip/setuptools, size), the running container
# (UID 10001, read-only root, /tmp writable, /healthz, /readyz, allowed and refused requests,
# `podman healthcheck run`, two workers answering and merged in /metrics), SIGTERM -> exit 0,
# and `workers: 2` with no writable /tmp -> a clear error and exit 1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
BASE_TAG=${BASE_TAG:-localhost/jwtproxy-python-standin:3.11-bookworm}
RUN_ID=jwtproxy-ct-$$
IMAGE=${IMAGE:-localhost/jwtproxy:$RUN_ID}  # the default one is removed at exit
KEEP_IMAGE=${IMAGE#"localhost/jwtproxy:$RUN_ID"}
WORK=$(mktemp -d /var/tmp/jwtproxy-container-test.XXXXXX)
FAILURES=0

log() { printf '== %s\n' "$*"; }
pass() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; FAILURES=$((FAILURES + 1)); }
check() {  # check DESCRIPTION EXPECTED ACTUAL
    if [[ "$2" == "$3" ]]; then pass "$1 ($3)"; else fail "$1: expected $2, got $3"; fi
}

cleanup() {
    podman pod rm --force --ignore "$RUN_ID" >/dev/null 2>&1 || true
    podman rm --force --ignore "$RUN_ID-noscratch" >/dev/null 2>&1 || true
    [[ -n "$KEEP_IMAGE" ]] || podman rmi --ignore "$IMAGE" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- podman as the trial ran it ------------------------------------------------------------
cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF="$WORK/containers.conf"

debian_mirror() {
    # The mirror apt is configured with (deb822 sources first, then sources.list).
    if [[ -n "${DEBIAN_MIRROR:-}" ]]; then echo "$DEBIAN_MIRROR"; return; fi
    local uri
    uri=$(awk '/^URIs:/ {u=$2} /^Suites:/ && /bookworm( |$)/ {print u; exit}' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [[ -n "$uri" ]] || uri=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

make_standin() {
    command -v debootstrap >/dev/null || { echo "no PYTHON_IMAGE and no debootstrap" >&2; exit 2; }
    local rootfs="$WORK/rootfs" mirror
    mirror=$(debian_mirror)
    log "debootstrap bookworm from $mirror (a few minutes)"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip \
        bookworm "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; exit 2; }
    ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python3"
    ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
    install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    tar -C "$rootfs" -c . | podman import \
        --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["python3"]' - "$BASE_TAG" >"$WORK/import.log" 2>&1 \
        || { cat "$WORK/import.log" >&2; exit 2; }
    rm -rf "$rootfs"
}

if [[ -n "${PYTHON_IMAGE:-}" ]]; then
    BASE=$PYTHON_IMAGE
else
    BASE=$BASE_TAG
    podman image exists "$BASE" || make_standin
fi

# --- the image --------------------------------------------------------------------------------
log "podman build --format docker --build-arg PYTHON_IMAGE=$BASE"
start=$(date +%s)
podman build --format docker --build-arg "PYTHON_IMAGE=$BASE" -t "$IMAGE" "$ROOT" \
    >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; exit 1; }
pass "image built in $(( $(date +%s) - start ))s"

check "image user" "10001:10001" "$(podman image inspect "$IMAGE" --format '{{.User}}')"
health=$(podman image inspect "$IMAGE" --format '{{json .HealthCheck.Test}}')
check "HEALTHCHECK kept (docker format)" \
    '["CMD","python","-m","jwtproxy.healthcheck","/etc/jwtproxy/config.yaml"]' "$health"
leftovers=$(podman run --rm --no-healthcheck --entrypoint python "$IMAGE" -c \
    'import importlib.util as u; print(",".join(m for m in ("pip", "setuptools") if u.find_spec(m)) or "none")')
check "pip/setuptools in the runtime venv" "none" "$leftovers"
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
base_size=$(podman image inspect "$BASE" --format '{{.Size}}')
venv=$(podman run --rm --no-healthcheck --entrypoint du "$IMAGE" -sk /opt/jwtproxy | cut -f1)
pass "image size $((size / 1000000)) MB = base $((base_size / 1000000)) MB + $(((size - base_size) / 1000000)) MB (venv $((venv / 1024)) MiB)"

# --- the pod: the ConfigMap config beside a stand-in app that also serves the key set ----------
mkdir -p "$WORK/config" "$WORK/srv"
eval "$(cd "$ROOT" && "$PYTHON" - "$WORK" <<'EOF'
import json, sys, time
from pathlib import Path
import yaml
from tests.tokens import make_keyring, mint

work = Path(sys.argv[1])
doc = next(d for d in yaml.safe_load_all(Path("deploy/kubernetes/configmap.yaml").read_text()) if d)
config = yaml.safe_load(doc["data"]["config.yaml"])
config["server"]["workers"] = 2
config["admin"]["listen"] = "0.0.0.0:9191"  # not the image's EXPOSEd 9090: the check must follow
config["issuers"]["cognito"]["cognito"]["endpoint"] = "http://127.0.0.1:8000"
(work / "config" / "config.yaml").write_text(yaml.safe_dump(config))
pool = config["issuers"]["cognito"]["cognito"]
keys = make_keyring()
jwks = work / "srv" / pool["user_pool_id"] / ".well-known" / "jwks.json"
jwks.parent.mkdir(parents=True)
jwks.write_text(json.dumps(keys.jwks()))
for page in ("health", "orders/1"):
    (work / "srv" / page).parent.mkdir(parents=True, exist_ok=True)
    (work / "srv" / page).write_text("app\n")
claims = {"iss": f"https://cognito-idp.{pool['region']}.amazonaws.com/{pool['user_pool_id']}",
          "client_id": config["issuers"]["cognito"]["audiences"][0], "token_use": "access"}
print(f"READ_TOKEN={mint(keys.rsa, {**claims, 'scope': 'orders/read'})}")
print(f"WRITE_TOKEN={mint(keys.rsa, {**claims, 'scope': 'orders/write'})}")
print(f"EXPIRED_TOKEN={mint(keys.rsa, {**claims, 'scope': 'orders/read', 'exp': int(time.time()) - 600})}")
EOF
)"
chmod -R a+rX "$WORK/config" "$WORK/srv"
free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
ADMIN=$(free_port)
PROXY=http://127.0.0.1:$PORT
ADMIN_URL=http://127.0.0.1:$ADMIN

log "pod $RUN_ID: proxy on $PROXY, admin on $ADMIN_URL"
podman pod create --name "$RUN_ID" -p "127.0.0.1:$PORT:8080" -p "127.0.0.1:$ADMIN:9191" >/dev/null
podman run -d --pod "$RUN_ID" --name "$RUN_ID-app" --no-healthcheck -v "$WORK/srv:/srv:ro" -w /srv \
    --entrypoint python "$IMAGE" -m http.server --bind 127.0.0.1 8000 >/dev/null
# As in deployment.yaml: read-only root (and no podman-added scratch: --read-only-tmpfs=false),
# a tmpfs at /tmp, the config directory read-only, no capabilities, no privilege escalation.
# --health-interval=disable: no systemd timer here; the check runs by `podman healthcheck run`.
LOCKED_DOWN=(--read-only --read-only-tmpfs=false --cap-drop ALL --security-opt no-new-privileges
             -v "$WORK/config:/etc/jwtproxy:ro" --health-interval=disable)
podman run -d --pod "$RUN_ID" --name "$RUN_ID-proxy" "${LOCKED_DOWN[@]}" --tmpfs /tmp "$IMAGE" >/dev/null

status() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" || true; }
for _ in $(seq 150); do  # up to 30 s for /readyz (the key set fetched), polled
    [[ $(status "$ADMIN_URL/readyz") == 200 ]] && break
    sleep 0.2
done
check "/healthz" 200 "$(status "$ADMIN_URL/healthz")"
check "/readyz" 200 "$(status "$ADMIN_URL/readyz")"
check "container UID" 10001 "$(podman exec "$RUN_ID-proxy" id -u)"
if podman exec "$RUN_ID-proxy" touch /etc/probe 2>/dev/null; then fail "root filesystem is writable"
else pass "root filesystem is read-only"; fi
check "metrics dir on the /tmp tmpfs" 1 \
    "$(podman exec "$RUN_ID-proxy" sh -c 'ls -d /tmp/jwtproxy-metrics-* | wc -l')"

check "public /health" 200 "$(status "$PROXY/health")"
check "no route: /admin" 404 "$(status "$PROXY/admin")"
check "no token" 401 "$(status "$PROXY/orders/1")"
check "expired token" 401 "$(status -H "Authorization: Bearer $EXPIRED_TOKEN" "$PROXY/orders/1")"
check "wrong scope" 403 "$(status -H "Authorization: Bearer $WRITE_TOKEN" "$PROXY/orders/1")"
allowed=0
for _ in $(seq 20); do
    [[ $(status -H "Authorization: Bearer $READ_TOKEN" "$PROXY/orders/1") == 200 ]] && allowed=$((allowed + 1))
done
check "allowed requests (orders/read)" 20 "$allowed"

if podman healthcheck run "$RUN_ID-proxy" >/dev/null; then pass "podman healthcheck run: healthy (admin on 9191)"
else fail "podman healthcheck run: unhealthy"; fi

pids=$(for _ in $(seq 40); do curl -s --max-time 5 "$ADMIN_URL/healthz" | jq -r .pid; done | sort -u | wc -l)
check "workers answering /healthz" 2 "$pids"
counted=0
for _ in $(seq 50); do  # each worker publishes its figures within a second: poll, not sleep
    counted=$(curl -s "$ADMIN_URL/metrics" \
        | awk '/^jwtproxy_requests_total\{.*route="orders-read"/ && /code="200"/ {s += $2} END {print s + 0}')
    [[ "$counted" == 20 ]] && break
    sleep 0.2
done
check "both workers' requests merged in /metrics" 20 "${counted%.0}"

log "SIGTERM"
podman kill --signal TERM "$RUN_ID-proxy" >/dev/null
check "exit status after SIGTERM" 0 "$(timeout 60 podman wait "$RUN_ID-proxy")"
podman logs "$RUN_ID-proxy" >"$WORK/proxy.log" 2>&1
if grep -q Traceback "$WORK/proxy.log"; then fail "traceback in the log"; else pass "no traceback in the log"; fi

log "workers: 2 on a read-only root without a /tmp tmpfs"
podman run -d --name "$RUN_ID-noscratch" "${LOCKED_DOWN[@]}" "$IMAGE" >/dev/null
check "exit status with no writable /tmp" 1 "$(timeout 60 podman wait "$RUN_ID-noscratch")"
podman logs "$RUN_ID-noscratch" >"$WORK/noscratch.log" 2>&1
if grep -q Traceback "$WORK/noscratch.log"; then fail "traceback instead of a clear error"; fi
if grep -q "needs a writable directory" "$WORK/noscratch.log"; then pass "clear error: $(head -c 300 "$WORK/noscratch.log")"
else fail "no clear error: $(head -c 600 "$WORK/noscratch.log")"; fi

if ((FAILURES)); then log "$FAILURES check(s) failed"; exit 1; fi
log "all checks passed"
