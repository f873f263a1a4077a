"""Run the real `jwtproxy` CLI as a subprocess for end-to-end tests.

`proxy_process(config)` fills in free loopback ports for `server.listen` (unless it is
null), `admin.listen` and `forward_auth.listen` (when the section is there), writes the
YAML, starts `python -m jwtproxy run -c FILE`, polls `/healthz` (and `/readyz` when
`wait_ready`), and stops the process it started by PID.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

START_TIMEOUT = 20.0


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process this test started (by its PID), SIGKILL if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ProxyProcess:
    process: subprocess.Popen[bytes]
    port: int
    admin_port: int
    config_path: Path
    log_path: Path
    final_logs: str | None = None
    forward_port: int | None = None  # forward_auth.listen, when the config has the section

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def logs(self) -> str:
        """The process output so far (after exit: all of it)."""
        if self.final_logs is not None:
            return self.final_logs
        return self.log_path.read_text(errors="replace")

    def admin_get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.admin_url + path, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()


def _poll(proc: ProxyProcess, path: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise RuntimeError(f"jwtproxy exited {proc.process.returncode}:\n{proc.logs()}")
        with contextlib.suppress(OSError):
            status, _ = proc.admin_get(path)
            if status == 200:
                return
        time.sleep(0.05)  # polling interval, not a readiness guess
    raise TimeoutError(f"jwtproxy not {path} within {START_TIMEOUT}s:\n{proc.logs()}")


@contextlib.contextmanager
def proxy_process(
    config: dict[str, Any],
    *,
    wait_ready: bool = True,
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Iterator[ProxyProcess]:
    config = copy.deepcopy(config)
    port, admin_port = free_port(), free_port()
    server = config.setdefault("server", {})
    if "listen" not in server or server["listen"] is not None:  # null: the proxy door off
        server["listen"] = f"127.0.0.1:{port}"
    config.setdefault("admin", {})["listen"] = f"127.0.0.1:{admin_port}"
    forward_port = None
    if "forward_auth" in config:
        forward_port = free_port()
        config["forward_auth"]["listen"] = f"127.0.0.1:{forward_port}"
    with tempfile.TemporaryDirectory(prefix="jwtproxy-test-") as tmp:
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        log_path = Path(tmp) / "proxy.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "jwtproxy", "run", "-c", str(config_path), *extra_args],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
            proc = ProxyProcess(process, port, admin_port, config_path, log_path,
                                forward_port=forward_port)
            try:
                deadline = time.monotonic() + START_TIMEOUT
                _poll(proc, "/healthz", deadline)
                if wait_ready:
                    _poll(proc, "/readyz", deadline)
                yield proc
            finally:
                stop(process)
                proc.final_logs = log_path.read_text(errors="replace")
