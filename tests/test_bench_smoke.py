"""The benchmark still works: `bench/run.sh --smoke` (Python upstream + jwtproxy, a few
seconds per path, no apt) must finish with every status as expected. Speed is never
asserted here; the figures are for humans (bench/README.md)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("bash") is None, reason="bench/run.sh needs bash")
def test_bench_smoke_runs_clean() -> None:
    result = subprocess.run(["bash", "bench/run.sh", "--smoke"], cwd=ROOT,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "smoke ok" in result.stdout + result.stderr
