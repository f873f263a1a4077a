"""A bounded soak in CI (~20 s on loopback): the real CLI (one worker) in front of a
recording upstream, 128 concurrent clients, valid tokens of several subjects, invalid and
missing tokens, bodies from 0 B to 8 MiB. The driver is bench/soak.py (also a script for
longer runs); this test runs it briefly and asserts its findings one by one."""

from __future__ import annotations

from pathlib import Path

from tests.bench_scripts import load
from tests.proc import proxy_process

WARMUP_SECONDS = 4.0
MAIN_SECONDS = 12.0
CONCURRENCY = 128


async def test_soak_every_request_accounted_for_memory_and_fds_flat() -> None:
    soak = load("soak")
    identity = soak.Identity.generate()
    with soak.RecordingUpstream(identity) as upstream, \
            proxy_process(soak.proxy_config(upstream.url)) as proxy:
        report = await soak.soak(proxy.url, proxy.process.pid, upstream, identity,
                                 seconds=MAIN_SECONDS, warmup=WARMUP_SECONDS,
                                 concurrency=CONCURRENCY)
    print(soak.summary(report))
    outcomes = report.outcomes
    allowed = [o for o in outcomes if o.item.allowed]
    denied = [o for o in outcomes if not o.item.allowed]
    assert len(outcomes) > 2000 and len(denied) > 200, "the load did not run"
    assert any(o.item.size > soak.MIB for o in allowed), "no large body was sent"
    assert any(o.item.chunked and o.item.size for o in allowed)

    broken = [f"{o.item.request_id}: {o.problem}" for o in outcomes if o.problem]
    assert broken == [], broken[:10]
    reached = upstream.records
    never = [o.item.request_id for o in allowed if o.item.request_id not in reached]
    assert never == [], never[:10]
    twice = {rid: r.count for rid, r in reached.items() if r.count != 1}
    assert twice == {}
    damaged = [o.item.request_id for o in allowed
               if (reached[o.item.request_id].digest, reached[o.item.request_id].size)
               != (o.item.digest, o.item.size)]
    assert damaged == [], damaged[:10]
    mixed = [o.item.request_id for o in allowed
             if reached[o.item.request_id].subject != o.item.subject]
    assert mixed == [], mixed[:10]
    leaked = [o.item.request_id for o in denied if o.item.request_id in reached]
    assert leaked == [], leaked[:10]
    assert set(reached) <= {o.item.request_id for o in outcomes} and upstream.anonymous == 0

    assert report.rss_growth <= soak.RSS_GROWTH_LIMIT, soak.summary(report)
    assert report.end.own_fds <= report.warm.own_fds + soak.FD_SLACK, soak.summary(report)
    assert report.problems == []
    log = proxy.final_logs  # .logs() would reopen the deleted file when the log is empty
    assert "Traceback" not in log and '"level":"error"' not in log, log[-3000:]


async def test_soak_with_a_revocation_every_second(tmp_path: Path) -> None:
    """Revocations added every second while the load runs (the file store): nothing lost,
    no revoked token served after its entry reached the proxy."""
    soak = load("soak")
    identity = soak.Identity.generate()
    settings = soak.Revocation(file=str(tmp_path / "revoked.yaml"))
    with soak.RecordingUpstream(identity) as upstream, proxy_process(
            soak.proxy_config(upstream.url, soak.revocation_data(settings))) as proxy:
        report = await soak.soak(proxy.url, proxy.process.pid, upstream, identity,
                                 seconds=MAIN_SECONDS, warmup=WARMUP_SECONDS / 2,
                                 concurrency=CONCURRENCY // 2, revocation=settings)
    print(soak.summary(report))
    doomed = report.doomed
    assert doomed is not None and len(doomed.reached) >= 3, "the revocations did not run"
    refused = [o for o in report.outcomes if o.item.doomed and o.status == 401]
    served = [o for o in report.outcomes if o.item.doomed and o.status == 200]
    assert refused and served, "the doomed tokens were not in the load"
    assert report.problems == [], soak.summary(report)
    assert "Traceback" not in (proxy.final_logs or "")
