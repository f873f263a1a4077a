"""Real programs the tests need from Debian (redis-server, chromium): installed with
apt-get when missing (CI starts on a fresh machine), started on loopback, stopped by PID."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.proc import free_port

APT_TIMEOUT = 1800.0
START_TIMEOUT = 20.0


def ensure_debian_package(program: str, package: str) -> str | None:
    """The path of `program`, installing `package` with apt-get when it is missing; None
    if it cannot be installed (no apt-get, no network, not root)."""
    found = shutil.which(program)
    if found is not None or shutil.which("apt-get") is None:
        return found
    install = ["apt-get", "-o", "DPkg::Lock::Timeout=900", "install", "-y",
               "--no-install-recommends", package]
    for attempt in (install, ["apt-get", "-o", "DPkg::Lock::Timeout=900", "update"], install):
        try:
            subprocess.run(attempt, check=False, timeout=APT_TIMEOUT, capture_output=True)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if shutil.which(program) is not None:
            break
    return shutil.which(program)


@dataclass
class RedisServer:
    """One redis-server on a loopback port, in its own temporary directory."""

    binary: str
    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             # persisted, so that a restart keeps the list (as a real deployment does)
             "--dir", str(self.workdir), "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.process.returncode}")
            if self.ping():
                return
            time.sleep(0.05)  # polling interval, not a readiness guess
        raise TimeoutError("redis-server did not answer PING")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Kill it (as a crash would), by the PID this started."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def start_redis() -> RedisServer | None:
    binary = ensure_debian_package("redis-server", "redis-server")
    if binary is None:
        return None
    server = RedisServer(binary, free_port(), Path(tempfile.mkdtemp(prefix="jwtproxy-redis-")))
    server.start()
    return server
