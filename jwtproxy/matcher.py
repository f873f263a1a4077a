"""Route table: compiled once, first match in file order wins.

Paths are matched after percent-decoding, slash merging and dot-segment removal (RFC 3986
§5.2.4), so `/public/../admin` and `//admin` are matched as `/admin`. Lookups cost the
number of path segments, not the number of routes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple
from urllib.parse import unquote

from .config import Route

ANY_PATH: Final = None


class NormalizedPath(NamedTuple):  # one per request: a tuple is built fastest
    """`path` is what routes match against; `changed` says whether it differs in
    structure from the raw path (dot segments, doubled slashes, encoded or backslash
    separators), in which case the
    request is forwarded with `path` so that the upstream sees what was authorized."""

    path: str
    changed: bool


def target_refusal(raw_path: str, query: str) -> str | None:
    """Why a request target is refused (400), or None. A `#` has no place in an origin-form
    target (RFC 9112 §3.2): upstream parsers drop what follows it, so the proxy would match
    one path and the upstream serve another."""
    if not raw_path.startswith("/"):
        return "request target must be an absolute path"
    if "#" in raw_path or "#" in query:
        return "request target must not contain a fragment (#)"
    # Servlet containers (Tomcat, Jetty, Spring) drop `;params` from each segment before
    # routing, so `/admin;x` is `/admin` to them and another path to every other parser;
    # `%3B` is refused too, as some decode before they strip.
    if ";" in raw_path or ("%" in raw_path and "%3b" in raw_path.lower()):
        return "path parameters (;) are not accepted in the request target"
    return None


def normalize_path(raw_path: str) -> NormalizedPath:
    """Percent-decode once, turn `\\` into `/`, merge `//`, and remove dot segments
    (RFC 3986 §5.2.4), so that a route sees the path the upstream will act on."""
    decoded = unquote(raw_path, errors="replace") if "%" in raw_path else raw_path
    if "\\" in decoded:
        decoded = decoded.replace("\\", "/")
    structural = decoded.count("/") != raw_path.count("/")  # encoded or backslash separators
    if "//" not in decoded and "/." not in decoded:
        return NormalizedPath(decoded, structural)
    segments = decoded.split("/")
    out: list[str] = []
    for segment in segments[1:]:
        # `..;x` is `..` to Tomcat and Jetty (path parameters); the gate refuses every `;`
        # before matching, this is for callers of this function alone
        dots = segment.split(";", 1)[0]
        if dots == "..":
            if out:
                out.pop()
        elif dots != "." and segment != "":  # an empty segment is a doubled slash
            out.append(segment)
    last = segments[-1].split(";", 1)[0]
    trailing = len(segments) > 1 and last in ("", ".", "..")
    path = "/" + "/".join(out) + ("/" if trailing and out else "")
    return NormalizedPath(path, structural or path != decoded)


def _prefix_key(prefix: str) -> str:
    return prefix.rstrip("/")


class RouteTable:
    """Indexes routes by exact path and by path prefix; keeps file order as priority."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)
        self.exact: dict[str, list[int]] = {}
        self.prefix: dict[str, list[int]] = {}
        self.any_path: list[int] = []
        for index, route in enumerate(self.routes):
            if route.match.path is not None:
                self.exact.setdefault(route.match.path, []).append(index)
            elif route.match.path_prefix is not None:
                self.prefix.setdefault(_prefix_key(route.match.path_prefix), []).append(index)
            else:
                self.any_path.append(index)

    def match(self, method: str, host: str, path: str) -> Route | None:
        best = len(self.routes)
        for index in self._candidates(path):
            if index < best and self._fits(self.routes[index], method, host):
                best = index
        return self.routes[best] if best < len(self.routes) else None

    def _candidates(self, path: str) -> list[int]:
        found = list(self.any_path)
        found.extend(self.exact.get(path, ()))
        if self.prefix:
            prefix = self.prefix
            found.extend(prefix.get("", ()))
            start = 1
            while True:
                slash = path.find("/", start)
                if slash < 0:
                    found.extend(prefix.get(path.rstrip("/"), ()))
                    break
                found.extend(prefix.get(path[:slash], ()))
                start = slash + 1
        return found

    @staticmethod
    def _fits(route: Route, method: str, host: str) -> bool:
        match = route.match
        if match.methods is not None and method not in match.methods:
            return False
        if match.host is None:
            return True
        name = _host_name(host)
        if match.host.startswith("*."):
            return name.endswith(match.host[1:]) and len(name) > len(match.host) - 1
        return name == match.host


def _host_name(host: str) -> str:
    """The Host header without port, lowercased (RFC 9110 §4.2.3: case-insensitive)."""
    host = host.lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    name = host.rsplit(":", 1)[0] if ":" in host else host
    return name[:-1] if name.endswith(".") else name  # `example.com.` is `example.com`
