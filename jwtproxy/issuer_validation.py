"""The `issuers:` section checked: each issuer, where its keys come from, its token rules."""

from __future__ import annotations

import re
from typing import Any, Final
from urllib.parse import urlsplit

from .config import (
    ASYMMETRIC_ALGORITHMS,
    COGNITO_HOST_TEMPLATE,
    DEFAULT_ASYMMETRIC_ALGORITHMS,
    DEFAULT_SYMMETRIC_ALGORITHMS,
    SYMMETRIC_ALGORITHMS,
    Dpop,
    Issuer,
    JwksSettings,
)
from .fields import FieldChecker, build

MIN_HMAC_SECRET_BYTES: Final = 32  # RFC 7518 §3.2: a key at least as long as the hash


class IssuerValidator(FieldChecker):
    """Validates the `issuers:` mapping into `Issuer`s, collecting every problem."""

    def issuers(self, value: Any) -> dict[str, Issuer]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem("issuers", "expected a mapping of issuer names")
            return {}
        out = {}
        for name, raw in value.items():
            issuer = self.issuer(f"issuers.{name}", name, raw)
            if issuer is not None:
                out[name] = issuer
        return out

    def issuer(self, path: str, name: str, value: Any) -> Issuer | None:
        raw = self.mapping(path, value, {
            "issuer", "jwks_uri", "jwks_file", "secret", "cognito", "audiences", "token_use",
            "algorithms", "leeway", "jwks", "typ", "ca_file", "allow_insecure_http", "dpop",
        })
        if not isinstance(value, dict):
            if value is None:
                self.problem(path, "expected a mapping")
            return None
        kwargs: dict[str, Any] = {"name": name}
        insecure = self.boolean(f"{path}.allow_insecure_http", raw.get("allow_insecure_http",
                                                                       False))
        kwargs["allow_insecure_http"] = insecure
        sources = [key for key in ("jwks_uri", "jwks_file", "secret", "cognito") if key in raw]
        if len(sources) > 1:
            self.problem(path, f"choose one key source, not {' and '.join(sources)}")
        if "cognito" in raw:
            if "issuer" in raw:
                self.problem(f"{path}.issuer", "not allowed with cognito: it is derived")
            kwargs.update(self.cognito(f"{path}.cognito", raw["cognito"], insecure))
        elif "issuer" not in raw:
            self.problem(f"{path}.issuer", "required (or use the cognito: shorthand)")
        else:
            kwargs["issuer"] = self.string(f"{path}.issuer", raw["issuer"])
        if "jwks_uri" in raw:
            kwargs["jwks_uri"] = self.url(f"{path}.jwks_uri", raw["jwks_uri"], insecure)
        if "jwks_file" in raw:
            kwargs["jwks_file"] = self.file(f"{path}.jwks_file", raw["jwks_file"])
        if "secret" in raw:
            secret = self.string(f"{path}.secret", raw["secret"])
            if secret is not None and len(secret.encode()) < MIN_HMAC_SECRET_BYTES:
                self.problem(f"{path}.secret", f"too short: use at least "
                             f"{MIN_HMAC_SECRET_BYTES} bytes (RFC 7518 §3.2)")
            kwargs["secret"] = secret
        if not sources and isinstance(kwargs.get("issuer"), str):
            issuer_url = kwargs["issuer"]
            if urlsplit(issuer_url).scheme in ("http", "https"):
                if self.url(f"{path}.issuer", issuer_url, insecure):
                    kwargs["discovery_uri"] = (
                        issuer_url.rstrip("/") + "/.well-known/openid-configuration")
            else:
                self.problem(path, "no key source: set jwks_uri, jwks_file or secret, "
                             "or make issuer an https:// URL for OIDC discovery")
        kwargs["algorithms"] = self.algorithms(path, raw, symmetric="secret" in raw)
        if "audiences" in raw:
            kwargs["audiences"] = self.strings(f"{path}.audiences", raw["audiences"])
        if "token_use" in raw:
            kwargs["token_use"] = self.choice(f"{path}.token_use", raw["token_use"],
                                              ("id", "access"))
        if "typ" in raw:
            kwargs["typ"] = self.string(f"{path}.typ", raw["typ"])
        if "leeway" in raw:
            kwargs["leeway"] = self.duration(f"{path}.leeway", raw["leeway"])
        if "jwks" in raw:
            kwargs["jwks"] = self.jwks_settings(f"{path}.jwks", raw["jwks"])
        if "ca_file" in raw:
            kwargs["ca_file"] = self.file(f"{path}.ca_file", raw["ca_file"])
        if "dpop" in raw:
            kwargs["dpop"] = self.dpop(f"{path}.dpop", raw["dpop"])
        if kwargs.get("issuer") is None:
            return None
        return build(Issuer, kwargs)

    def dpop(self, path: str, value: Any) -> Dpop:
        """`dpop: allowed` or `dpop: {mode, max_age, algorithms}` (RFC 9449)."""
        modes = ("allowed", "required", "off")
        if isinstance(value, str):
            return build(Dpop, {"mode": self.choice(path, value, modes)})
        raw = self.mapping(path, value, {"mode", "max_age", "algorithms"})
        kwargs: dict[str, Any] = {}
        if "mode" in raw:
            kwargs["mode"] = self.choice(f"{path}.mode", raw["mode"], modes)
        if "max_age" in raw:
            kwargs["max_age"] = self.duration(f"{path}.max_age", raw["max_age"])
            if kwargs["max_age"] == 0:
                self.problem(f"{path}.max_age", "must be more than 0")
                kwargs["max_age"] = None
        if "algorithms" in raw:
            names = self.strings(f"{path}.algorithms", raw["algorithms"])
            for i, name in enumerate(names):
                if name not in ASYMMETRIC_ALGORITHMS:
                    # RFC 9449 §4.2: a proof is signed with an asymmetric key
                    self.problem(f"{path}.algorithms[{i}]", f"{name!r} not allowed: a proof "
                                 f"needs one of {', '.join(sorted(ASYMMETRIC_ALGORITHMS))}")
            if not names:
                self.problem(f"{path}.algorithms", "must not be empty")
            kwargs["algorithms"] = names
        return build(Dpop, kwargs)

    def cognito(self, path: str, value: Any, insecure: bool) -> dict[str, Any]:
        raw = self.mapping(path, value, {"region", "user_pool_id", "endpoint"})
        region = self.string(f"{path}.region", raw.get("region"))
        pool = self.string(f"{path}.user_pool_id", raw.get("user_pool_id"))
        if region and not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", region):
            self.problem(f"{path}.region", f"not an AWS region: {region!r}")
        if pool and not re.fullmatch(r"[\w-]+_[0-9a-zA-Z]+", pool):
            self.problem(f"{path}.user_pool_id", f"not a user pool id: {pool!r}")
        if not region or not pool:
            return {}
        if "_" in pool and pool.split("_", 1)[0] != region:
            # a pool's id starts with its region: the keys would be looked for (and the
            # issuer expected) in the wrong region, and every token refused
            self.problem(f"{path}.user_pool_id", f"{pool!r} is a pool of region "
                         f"{pool.split('_', 1)[0]!r}, not of {region!r}")
        base = COGNITO_HOST_TEMPLATE.format(region=region)
        if "endpoint" in raw:
            endpoint = self.url(f"{path}.endpoint", raw["endpoint"], insecure)
            key_base = endpoint.rstrip("/") if endpoint else base
        else:
            key_base = base
        return {"issuer": f"{base}/{pool}", "jwks_uri": f"{key_base}/{pool}/.well-known/jwks.json"}

    def algorithms(self, path: str, raw: dict[str, Any], symmetric: bool) -> tuple[str, ...]:
        if "algorithms" not in raw:
            return DEFAULT_SYMMETRIC_ALGORITHMS if symmetric else DEFAULT_ASYMMETRIC_ALGORITHMS
        names = self.strings(f"{path}.algorithms", raw["algorithms"])
        allowed = SYMMETRIC_ALGORITHMS if symmetric else ASYMMETRIC_ALGORITHMS
        for i, name in enumerate(names):
            if name not in allowed:
                hint = ("a secret verifies only HS256/HS384/HS512" if symmetric else
                        "HS* needs `secret`" if name in SYMMETRIC_ALGORITHMS else
                        f"supported: {', '.join(sorted(allowed))}")
                self.problem(f"{path}.algorithms[{i}]", f"{name!r} not allowed here: {hint}")
        if not names:
            self.problem(f"{path}.algorithms", "must not be empty")
        return names

    def jwks_settings(self, path: str, value: Any) -> JwksSettings:
        known = {"cache_ttl", "refresh_min_interval", "stale_if_error", "timeout"}
        raw = self.mapping(path, value, known)
        kwargs = {key: self.duration(f"{path}.{key}", raw[key]) for key in raw if key in known}
        return build(JwksSettings, kwargs)
