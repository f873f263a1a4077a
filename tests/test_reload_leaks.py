"""Reloads leak nothing: a few hundred SIGHUPs with an https upstream in use (trustme CA)
and a steady load keep fds, upstream connections and RSS bounded. The driver is
bench/reload_storm.py (also a script for the long version)."""

from __future__ import annotations

from tests.bench_scripts import load

RELOADS = 301  # odd: the last config is B, without the http upstream
CONCURRENCY = 2


def test_reload_storm_keeps_fds_connections_and_memory_flat() -> None:
    storm = load("reload_storm")
    report = storm.storm(RELOADS, CONCURRENCY)
    assert storm.bounded(report, CONCURRENCY) == []
    assert report.failures == []
    assert report.requests > RELOADS
    # the http upstream left the config on the last reload: its connections were closed
    assert report.after.http_connections == 0
    # before the fix each reload kept a TLS connection and ~330 KB
    assert report.after.rss_kb - report.before.rss_kb < 12 * 1024, (report.before, report.after)
