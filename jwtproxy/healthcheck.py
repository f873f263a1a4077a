"""`python -m jwtproxy.healthcheck [CONFIG]`: the container image's HEALTHCHECK.

Asks `/healthz` on the admin address the config names (`admin.listen`; a wildcard address
is asked on loopback), so the check follows the config instead of a port written into the
image. Exit 0 when it answers 200; 1 otherwise, with the reason on stderr. A config that
does not load is unhealthy too: the next start would fail.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from typing import Final

from .config import Listen
from .errors import ConfigError
from .loader import load_file

DEFAULT_CONFIG: Final = "/etc/jwtproxy/config.yaml"
TIMEOUT: Final = 2.0  # seconds; the image's HEALTHCHECK --timeout is 3s
LOOPBACK: Final = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def healthz_url(listen: Listen) -> str:
    """The URL of /healthz on `listen`, asked from inside the same network namespace."""
    host = LOOPBACK.get(listen.host, listen.host)
    return f"http://{Listen(host, listen.port)}/healthz"


def main(argv: list[str]) -> int:
    path = argv[0] if argv else DEFAULT_CONFIG
    try:
        url = healthz_url(load_file(path).admin.listen)
    except (OSError, ConfigError) as err:
        print(f"unhealthy: config {path}: {err}", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            status = resp.status
    except urllib.error.HTTPError as err:
        status = err.code
    except OSError as err:
        print(f"unhealthy: {url}: {err}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
