"""The expiring cache behind the verified-token and refusal caches: never returns an entry
past its time, bounded (oldest dropped first)."""

from __future__ import annotations

from jwtproxy.expiring import ExpiringCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cache(size: int = 3) -> tuple[ExpiringCache[str, float], Clock]:
    clock = Clock()
    return ExpiringCache(size, lambda _key, until, _now: until, clock), clock


def test_an_entry_lives_until_its_time_and_not_a_moment_longer() -> None:
    entries, clock = cache()
    entries["a"] = 1010.0
    assert entries.get("a") == 1010.0
    clock.now = 1009.999
    assert entries.get("a") == 1010.0
    clock.now = 1010.0
    assert entries.get("a") is None
    assert len(entries) == 0


def test_an_entry_already_past_its_time_is_not_stored() -> None:
    entries, _ = cache()
    entries["old"] = 999.0
    assert entries.get("old") is None and len(entries) == 0


def test_full_cache_drops_its_oldest_entry() -> None:
    entries, _ = cache(size=3)
    for key in "abcd":
        entries[key] = 2000.0
    assert entries.get("a") is None
    assert [entries.get(key) for key in "bcd"] == [2000.0] * 3
    entries["b"] = 3000.0  # re-setting moves an entry to the young end
    entries["e"] = 2000.0
    assert entries.get("c") is None and entries.get("b") == 3000.0


def test_len_counts_only_valid_entries() -> None:
    entries, clock = cache(size=10)
    entries["short"], entries["long"] = 1001.0, 1100.0
    clock.now = 1050.0
    assert len(entries) == 1 and list(entries) == ["long"]


def test_a_zero_size_cache_holds_nothing() -> None:
    entries, _ = cache(size=0)
    entries["a"] = 2000.0
    assert entries.get("a") is None


def test_a_full_cache_keeps_dropping_its_oldest_as_new_entries_come() -> None:
    cache: ExpiringCache[int, str] = ExpiringCache(3, lambda k, v, now: now + 60, lambda: 0.0)
    for key in range(10):
        cache[key] = str(key)
    assert list(cache) == [7, 8, 9]
    cache[8] = "again"  # stored anew: now the newest
    cache[10] = "10"
    assert list(cache) == [9, 8, 10]
    assert cache.get(7) is None and cache.get(8) == "again"
