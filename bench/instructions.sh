#!/usr/bin/env bash
# Instructions one jwtproxy worker executes per request on one path, counted by callgrind:
# unlike CPU time on a shared VM, the count is the same from run to run (±0.1%), so two
# checkouts can be compared by running this once for each.
#
#   bench/instructions.sh [valid|invalid|public|distinct] [REQUESTS]   (default valid 500)
#   SRC=/path/to/other/checkout bench/instructions.sh valid      # the other code, same keys
#
# One keep-alive client sends REQUESTS requests one after the other once the worker is
# warm; only those are counted (user-space instructions: Python, aiohttp, uvloop, OpenSSL;
# not the kernel's socket work). Needs valgrind (installed from Debian when missing, as
# root), nginx and wrk as for bench/run.sh; PYTHON= picks the interpreter. About 20 s.
# Listens on 127.0.0.1 only; stops only the processes it started, by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH_KIND=${1:-valid}
REQUESTS=${2:-500}
RUN=bench/run
OUT=$RUN/instructions
mkdir -p "$OUT"
command -v valgrind >/dev/null || apt-get install -y -q -o DPkg::Lock::Timeout=900 valgrind >/dev/null
source bench/one_worker.sh  # its EXIT trap stops what it started
tokens=$(one_worker_tokens "$PATH_KIND")
one_worker_start "$PATH_KIND" 18294 19304 "$OUT" \
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$PWD/$OUT/callgrind.out"
warm=$(head -n1 "$(one_worker_tokens valid)")  # a distinct run keeps its tokens unseen
wrk -t1 -c4 -d3s -H "Authorization: Bearer $warm" http://127.0.0.1:18294/ >/dev/null  # warm-up
callgrind_control -i on "$proxy" >/dev/null 2>&1
$PY - "$tokens" "$REQUESTS" <<'PY'
import itertools
import socket
import sys

count = int(sys.argv[2])
with open(sys.argv[1]) as lines:
    found = [line.strip() for line in lines if line.strip()]
# one token again and again, or each request its own (distinct)
tokens = list(itertools.islice(itertools.cycle(found), count)) if len(found) == 1 else found[:count]
assert len(tokens) == count, "fewer distinct tokens than requests"
with socket.create_connection(("127.0.0.1", 18294)) as sock:
    for token in tokens:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
                     "\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            body += sock.recv(65536)
PY
callgrind_control -i off "$proxy" >/dev/null 2>&1
kill -TERM "$proxy"
wait "$proxy" 2>/dev/null || true
total=$(grep "Collected :" "$OUT/proxy.log" | awk '{gsub(",", "", $NF); print $NF}')
echo "$PATH_KIND: $((total / REQUESTS)) instructions/request ($REQUESTS requests, $($PY -c 'import platform; print(platform.python_implementation(), platform.python_version())'), ${SRC:-$(pwd)})"
