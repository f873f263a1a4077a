"""Debian packages a test needs (Prometheus, promtool), installed by the test run itself when
missing, so that `bash .ci/run` on a fresh Debian machine runs them instead of skipping."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Final

import pytest

APT_TIMEOUT: Final = 1200  # seconds, lock wait included
# Other apt users on the machine may hold the lock: wait for it rather than fail.
APT: Final = ("apt-get", "-o", "DPkg::Lock::Timeout=900")


def ensure_binary(binary: str, package: str) -> str:
    """The path of `binary`, installing Debian `package` first when it is missing.

    Skips (saying why) where apt cannot install here: no apt-get, or not root."""
    found = shutil.which(binary)
    if found is not None:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip(f"{binary} is not installed and apt-get cannot install {package} here "
                    "(needs Debian and root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*APT, "install", "-y", "--no-install-recommends", package]
    result = subprocess.run(install, capture_output=True, text=True, timeout=APT_TIMEOUT,
                            env=env, check=False)
    if result.returncode != 0:  # an outdated package list: refresh it once
        subprocess.run([*APT, "update"], capture_output=True, timeout=APT_TIMEOUT, env=env,
                       check=False)
        result = subprocess.run(install, capture_output=True, text=True,
                                timeout=APT_TIMEOUT, env=env, check=False)
    found = shutil.which(binary)
    if found is None:
        pytest.fail(f"apt-get install {package} did not provide {binary}:\n"
                    f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return found
