"""The container image for real (deploy/container-test.sh under podman, when podman can run
containers here), and the two pieces of the image's runtime it relies on: the HEALTHCHECK
command that follows `admin.listen`, and a clear error when `workers > 1` has nowhere to keep
its metrics (a read-only root without a /tmp tmpfs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from jwtproxy import supervisor
from jwtproxy.config import MULTIPROC_ENV, Listen
from jwtproxy.healthcheck import healthz_url
from jwtproxy.healthcheck import main as healthcheck
from tests.proc import free_port, proxy_process

ROOT: Final = Path(__file__).resolve().parent.parent
SCRIPT: Final = ROOT / "deploy" / "container-test.sh"
SCRIPT_TIMEOUT: Final = 1800  # seconds: a first run debootstraps the base image
MISSING_PREREQUISITES: Final = 2  # the script's exit status when it cannot build at all

PUBLIC: Final[dict[str, Any]] = {
    "routes": [{"name": "public", "match": {"path_prefix": "/"},
                "upstream": "http://127.0.0.1:9", "auth": "none"}],
}


def _podman_runs_containers() -> str | None:
    """Why the container test cannot run here, or None when it can."""
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman debootstrap)"
    if os.geteuid() != 0:
        return "deploy/container-test.sh runs rootful podman: run the tests as root"
    if not os.environ.get("PYTHON_IMAGE") and shutil.which("debootstrap") is None:
        return "no base image: set PYTHON_IMAGE or install debootstrap"
    info = subprocess.run(["podman", "info"], capture_output=True, text=True, timeout=120,
                          check=False)
    if info.returncode != 0:
        return f"podman cannot run containers here: {info.stderr.strip()[-300:]}"
    return None


def test_the_image_builds_and_runs_under_podman() -> None:
    reason = _podman_runs_containers()
    if reason is not None:
        pytest.skip(reason)
    result = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=SCRIPT_TIMEOUT,
        check=False, env={**os.environ, "PYTHON": sys.executable},
    )
    output = result.stdout + result.stderr
    if result.returncode == MISSING_PREREQUISITES:
        pytest.skip(f"deploy/container-test.sh could not build: {output[-600:]}")
    assert result.returncode == 0, output
    assert "FAIL" not in result.stdout and "== all checks passed" in result.stdout, output


# --- HEALTHCHECK: python -m jwtproxy.healthcheck CONFIG ------------------------------------------


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        (Listen("0.0.0.0", 9090), "http://127.0.0.1:9090/healthz"),
        (Listen("::", 9191), "http://[::1]:9191/healthz"),
        (Listen("127.0.0.1", 9292), "http://127.0.0.1:9292/healthz"),
        (Listen("10.1.2.3", 9090), "http://10.1.2.3:9090/healthz"),
        (Listen("::1", 9090), "http://[::1]:9090/healthz"),
    ],
)
def test_healthcheck_asks_the_configured_admin_address(listen: Listen, url: str) -> None:
    assert healthz_url(listen) == url


def test_healthcheck_is_healthy_on_a_running_proxy_with_any_admin_port() -> None:
    with proxy_process(PUBLIC) as proxy:
        assert proxy.admin_port != 9090
        assert healthcheck([str(proxy.config_path)]) == 0


@pytest.mark.parametrize("admin", ["127.0.0.1:{port}", "0.0.0.0:{port}"])
def test_healthcheck_is_unhealthy_when_nothing_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], admin: str
) -> None:
    config = tmp_path / "config.yaml"
    listen = admin.format(port=free_port())
    config.write_text(yaml.safe_dump({**PUBLIC, "admin": {"listen": listen}}))
    assert healthcheck([str(config)]) == 1
    assert "unhealthy: http://127.0.0.1:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [(None, "cannot read"), ("admin: {listen: nowhere}\n", "admin.listen")],
)
def test_healthcheck_is_unhealthy_when_the_config_does_not_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None, message: str
) -> None:
    config = tmp_path / "config.yaml"
    if text is not None:
        config.write_text(text)
    assert healthcheck([str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"unhealthy: config {config}") and message in err, err


# --- workers > 1 with nowhere to keep the metrics ----------------------------------------------


def test_no_writable_temp_dir_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))  # as on a read-only root
    with pytest.raises(supervisor.MetricsDirError, match="mount a tmpfs at /tmp"):
        supervisor.supervise(tmp_path / "config.yaml", 2, 1.0, watch=False)


def _run_two_workers(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**PUBLIC, "server": {"workers": 2,
                                                           "listen": f"127.0.0.1:{free_port()}"},
                                      "admin": {"listen": f"127.0.0.1:{free_port()}"}}))
    return subprocess.run([sys.executable, "-m", "jwtproxy", "run", "-c", str(config)],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, **env})


@pytest.mark.parametrize("where", ["missing", "a file"])
def test_an_unusable_multiproc_dir_stops_the_start_with_a_clear_error(
    tmp_path: Path, where: str
) -> None:
    target = tmp_path / "metrics"
    if where == "a file":
        target.write_text("")
    result = _run_two_workers(tmp_path, {MULTIPROC_ENV: str(target)})
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert '"event": "cannot_serve"' in output or '"event":"cannot_serve"' in output, output
    assert f"{MULTIPROC_ENV}={target} is not a writable directory" in output
