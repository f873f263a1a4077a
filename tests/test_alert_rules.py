"""deploy/prometheus/jwtproxy-rules.yaml: `promtool check rules`, `promtool test rules` with a
case that fires and one that stays quiet for every alert, only catalog metrics, and the
PrometheusRule of deploy/kubernetes/monitoring carrying the same groups."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from tests.catalog import CATALOG, ROOT, SERIES
from tests.debian import ensure_binary

RULES: Final = ROOT / "deploy" / "prometheus" / "jwtproxy-rules.yaml"
RULE_TESTS: Final = RULES.with_name("jwtproxy-rules.test.yaml")
PROMETHEUS_RULE: Final = ROOT / "deploy" / "kubernetes" / "monitoring" / "prometheusrule.yaml"
# DESIGN "Tokens that must stop working": the revocation store's reads, by result.
REVOCATION: Final = {"jwtproxy_revocation_sync_total": frozenset({"result"})}
_METRIC: Final = re.compile(r"(?<![:\w])jwtproxy_[a-z0-9_]+(?![:\w])")


@pytest.fixture(scope="module")
def promtool() -> str:
    return ensure_binary("promtool", "prometheus")


def _promtool(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120,
                          check=False, cwd=cwd)


def _groups() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    assert isinstance(groups, list)
    return groups


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in _groups() for rule in group["rules"] if "alert" in rule]


def test_rules_pass_promtool_check(promtool: str) -> None:
    result = _promtool(promtool, "check", "rules", str(RULES), cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_unit_tests_pass(promtool: str) -> None:
    result = _promtool(promtool, "test", "rules", RULE_TESTS.name, cwd=RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_fails_a_wrong_expectation(promtool: str, tmp_path: Path) -> None:
    # Guards the test above: every alert's firing case, expected quiet instead, must fail.
    shutil.copy(RULES, tmp_path / RULES.name)
    tests = yaml.safe_load(RULE_TESTS.read_text())
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            check["exp_alerts"] = []
    (tmp_path / RULE_TESTS.name).write_text(yaml.safe_dump(tests))
    result = _promtool(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    failed = set(re.findall(r"alertname: (\w+)", result.stdout + result.stderr))
    assert failed == {alert["alert"] for alert in _alerts()}


def test_every_alert_has_a_case_that_fires_and_one_that_stays_quiet() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = {alert["alert"] for alert in _alerts()}
    assert fires == alerts, f"no firing case: {sorted(alerts - fires)}"
    assert quiet == alerts, f"no quiet case: {sorted(alerts - quiet)}"


def test_the_alerts_cover_what_operators_page_on() -> None:
    recorded = {rule["record"]: rule["expr"] for group in _groups() for rule in group["rules"]
                if "record" in rule}

    def metrics(name: str) -> set[str]:
        """The catalog metrics an alert reads, through the recording rules it uses."""
        expr = next(a["expr"] for a in _alerts() if a["alert"] == name)
        expr += " ".join(definition for record, definition in recorded.items() if record in expr)
        return set(_METRIC.findall(expr))

    assert "jwtproxy_jwks_last_success_timestamp_seconds" in metrics("JwtproxyJwksKeysStale")
    assert "jwtproxy_revocation_sync_total" in metrics("JwtproxyRevocationSyncFailing")
    assert "jwtproxy_config_reloads_total" in metrics("JwtproxyConfigReloadRefused")
    assert "jwtproxy_request_duration_seconds_bucket" in metrics("JwtproxyHighLatency")
    assert {"jwtproxy_jwks_keys", "jwtproxy_auth_total"} <= metrics("JwtproxyNoKeysForIssuer")
    assert "jwtproxy_jwks_refresh_total" in metrics("JwtproxyJwksRefreshFailing")
    assert "jwtproxy_requests_total" in metrics("JwtproxyUpstreamErrors")
    assert "jwtproxy_upstream_connections_closed_total" in metrics("JwtproxyUpstreamMisbehaving")
    assert "jwtproxy_auth_total" in metrics("JwtproxyHighDenialRate")


def test_rules_use_only_catalog_metrics_and_labels() -> None:
    known = {**{name: CATALOG[metric] for name, metric in SERIES.items()}, **REVOCATION}
    for group in _groups():
        for rule in group["rules"]:
            names = set(_METRIC.findall(rule["expr"]))
            assert names <= set(known), f"not in the catalog: {sorted(names - set(known))}"
            for name, matchers in re.findall(r"(?<![:\w])(jwtproxy_\w+)\{([^}]*)\}",
                                             rule["expr"]):
                labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
                assert labels <= known[name], f"{name} has no label {labels - known[name]}"


def test_every_alert_says_how_bad_and_what_to_do() -> None:
    for alert in _alerts():
        assert alert["alert"].startswith("Jwtproxy"), alert["alert"]
        assert alert["labels"]["severity"] in {"warning", "critical"}, alert["alert"]
        assert {"summary", "description"} <= set(alert["annotations"]), alert["alert"]


def test_the_prometheusrule_carries_the_same_groups() -> None:
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == _groups()
