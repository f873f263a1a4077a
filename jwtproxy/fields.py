"""Config values checked one at a time: each problem recorded with its path and line."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from .config import Listen, url_allowed

T = TypeVar("T")

PARENT_PATH: Final = re.compile(r"(\.[^.\[]*|\[\d+\])$")
DURATION_PATTERN: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
HOST_LABEL: Final = r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"
HOST_NAME: Final = re.compile(rf"{HOST_LABEL}(\.{HOST_LABEL})*")


class FieldChecker:
    """Checks one value at its path: returns it checked, or records the problem (with the
    line of the path or its nearest parent) and returns None or an empty value."""

    def __init__(self, lines: dict[str, int], base_dir: Path) -> None:
        self.lines = lines
        self.base_dir = base_dir
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        line = None
        probe = path
        while line is None and probe:
            line = self.lines.get(probe)
            parent = PARENT_PATH.sub("", probe)
            probe = parent if parent != probe else ""  # a top-level key has no parent
        where = f" (line {line})" if line else ""
        self.problems.append(f"{path or '<config>'}: {message}{where}")

    def mapping(self, path: str, value: Any, allowed: set[str] | None) -> dict[str, Any]:
        """A mapping; `allowed` None means its keys are the user's (claim names), not
        part of the schema."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(path, "expected a mapping")
            return {}
        if allowed is not None:
            for key in value:
                if key not in allowed:
                    self.problem(f"{path}.{key}" if path else key, "unknown key")
        return value

    def string(self, path: str, value: Any) -> str | None:
        if isinstance(value, str) and value:
            return value
        self.problem(path, "expected a non-empty string")
        return None

    def strings(self, path: str, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.problem(path, "expected a list of strings")
            return ()
        out = [self.string(f"{path}[{i}]", item) for i, item in enumerate(value)]
        return tuple(item for item in out if item is not None)

    def boolean(self, path: str, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        self.problem(path, "expected true or false")
        return False

    def integer(self, path: str, value: Any, minimum: int = 1) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
            return value
        self.problem(path, f"expected a whole number >= {minimum}")
        return None

    def duration(self, path: str, value: Any) -> float | None:
        if (isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
                and math.isfinite(value)):
            return float(value)
        if isinstance(value, str) and value and DURATION_PATTERN.sub("", value) == "":
            return sum(
                float(n) * DURATION_UNITS[u] for n, u in DURATION_PATTERN.findall(value)
            )
        self.problem(path, f"bad duration {value!r}: use e.g. 500ms, 30s, 10m, 1h")
        return None

    def choice(self, path: str, value: Any, options: tuple[str, ...]) -> str | None:
        if value in options:
            return str(value)
        self.problem(path, f"expected one of {', '.join(options)}, got {value!r}")
        return None

    def listen(self, path: str, value: Any) -> Listen | None:
        if not isinstance(value, str | int):
            self.problem(path, "expected host:port")
            return None
        host, _, port = str(value).rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            self.problem(path, f"bad listen address {value!r}: expected host:port")
            return None
        if not _is_host(host):
            self.problem(path, f"bad listen address {value!r}: {host!r} is not an IP address "
                         "or host name")
            return None
        return Listen(host, int(port))

    def file(self, path: str, value: Any) -> str | None:
        name = self.string(path, value)
        if name is None:
            return None
        full = (self.base_dir / name) if not Path(name).is_absolute() else Path(name)
        if not full.is_file():
            self.problem(path, f"file not found: {name}")
            return None
        return str(full)

    def url(self, path: str, value: Any, insecure_ok: bool = False) -> str | None:
        """An http(s) URL; plain http only to loopback unless `insecure_ok`."""
        text = self.string(path, value)
        if text is None:
            return None
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
        except ValueError as err:
            self.problem(path, f"bad URL {text!r}: {err}")
            return None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.problem(path, f"expected an http(s):// URL, got {text!r}")
            return None
        if not url_allowed(text, insecure_ok):
            self.problem(
                path, "plain http:// is allowed only to a loopback host "
                "(set allow_insecure_http: true to override)"
            )
            return None
        return text


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return HOST_NAME.fullmatch(host) is not None
    return True


def build(cls: Callable[..., T], kwargs: dict[str, Any]) -> T:
    """Construct with the checked values; a None (already reported) takes the default."""
    return cls(**{key: value for key, value in kwargs.items() if value is not None})
