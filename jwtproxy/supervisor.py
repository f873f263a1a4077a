"""`server.workers > 1`: N worker processes share the ports (SO_REUSEPORT); the
supervisor restarts a crashed worker and passes SIGHUP/SIGTERM/SIGINT on.

Workers are fresh interpreters (not forks) so that prometheus-client sees
PROMETHEUS_MULTIPROC_DIR at import and `/metrics` merges every worker.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Final

from .config import MULTIPROC_ENV

log = logging.getLogger("jwtproxy.supervisor")

RESTART_BACKOFF: Final = 1.0
POLL_INTERVAL: Final = 0.2
PR_SET_PDEATHSIG: Final = 1


def supervise(config_path: Path, workers: int, graceful_timeout: float, watch: bool) -> int:
    """Run `workers` workers until a stop signal; raises `MetricsDirError` before starting
    any if there is nowhere to keep their metrics."""
    metrics_dir, own_dir = _metrics_dir()
    env = {**os.environ, MULTIPROC_ENV: metrics_dir}
    command = [sys.executable, "-m", "jwtproxy", "run", "-c", str(config_path), "--worker"]
    if watch:
        command.append("--watch")
    stopping = False
    children: dict[int, subprocess.Popen[bytes]] = {}

    def spawn() -> None:
        child = subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)
        children[child.pid] = child
        log.info("worker_started", extra={"pid": child.pid})

    def on_stop(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            child.send_signal(signum)

    def on_hup(signum: int, _: FrameType | None) -> None:
        for child in children.values():
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    try:
        for _ in range(workers):
            spawn()
        while children:
            time.sleep(POLL_INTERVAL)
            for pid, child in list(children.items()):
                code = child.poll()
                if code is None:
                    continue
                del children[pid]
                _mark_dead(pid, metrics_dir)
                if not stopping:
                    log.error("worker_exited", extra={"pid": pid, "code": code})
                    time.sleep(RESTART_BACKOFF)
                    if not stopping:  # a stop signal may have come during the backoff
                        spawn()
        return 0
    finally:
        deadline = time.monotonic() + graceful_timeout + 5
        for child in children.values():
            if child.poll() is None:
                child.terminate()
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


class MetricsDirError(OSError):
    """No writable directory for the workers' metrics files."""


def _metrics_dir() -> tuple[str, bool]:
    """The workers' shared metrics directory, and whether the supervisor created it."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        if not os.path.isdir(given) or not os.access(given, os.W_OK | os.X_OK):
            raise MetricsDirError(
                f"{MULTIPROC_ENV}={given} is not a writable directory (server.workers > 1 "
                "keeps the workers' metrics there)")
        return given, False
    try:
        return tempfile.mkdtemp(prefix="jwtproxy-metrics-"), True
    except OSError as err:
        raise MetricsDirError(
            "server.workers > 1 needs a writable directory for the workers' metrics and "
            f"found none ({err}): mount a tmpfs at /tmp (docker run --tmpfs /tmp; an "
            f"emptyDir in Kubernetes), or set TMPDIR or {MULTIPROC_ENV}") from err


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM if the supervisor dies, instead of lingering."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _mark_dead(pid: int, metrics_dir: str) -> None:
    """Drop a dead worker's live-gauge files so /metrics stops counting it."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]
