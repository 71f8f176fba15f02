"""Verdict cache: LRU in memory, SQLite on disk, keys, and its use by the judge."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from judge_fakes import fake_judge, ok, verdict_json

from rewards.client.transport import Reply, TransportError
from rewards.errors import JudgeError
from rewards.judge.cache import VerdictCache, verdict_from_json, verdict_key, verdict_to_json
from rewards.judge.rubric import CriterionConfig, Verdict

V1 = Verdict({"relevance": 8.0, "memorability": 5.0, "length": 10.0}, False, True, {"relevance": "fits"})
V2 = Verdict({"relevance": 1.0, "memorability": 2.0, "length": 3.0})


def run(coro):
    return asyncio.run(coro)


def test_lru_is_bounded_and_refreshes_on_get() -> None:
    cache = VerdictCache(max_entries=3)

    async def main():
        for key in "abc":
            await cache.put(key, V1)
        assert await cache.get("a") == V1  # a is now the most recent
        await cache.put("d", V2)  # evicts b, the least recent
        return [await cache.get(k) for k in "abcd"]

    assert run(main()) == [V1, None, V1, V2]
    assert len(cache) == 3 and (cache.hits, cache.misses) == (4, 1)


def test_key_covers_model_rubric_prompt_request_and_candidate() -> None:
    base = (["m"], "seed000-v2", "judge-v2", "A bakery", "bread.com")
    key = verdict_key(*base)
    assert verdict_key(["m", "m"], *base[1:]) == key  # the set of models
    for i, other in enumerate([["m2"], "seed000-v3", "judge-v3", "A bakery.", "bread.co"]):
        changed = list(base)
        changed[i] = other
        assert verdict_key(*changed) != key, i


def test_sqlite_cache_survives_a_new_process(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "verdicts.sqlite"
    first = VerdictCache(max_entries=10, path=path)
    run(first.put("k", V1))
    first.close()
    second = VerdictCache(max_entries=0, path=path)  # disk only
    assert run(second.get("k")) == V1 and run(second.get("other")) is None
    second.close()


def test_undecodable_rows_are_misses(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite"
    cache = VerdictCache(max_entries=0, path=path)
    run(cache.put("k", V1))
    cache.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE verdicts SET verdict = ?", ('{"criteria": "nope"}',))
    assert run(VerdictCache(0, path).get("k")) is None


@pytest.mark.parametrize("text", ['{"criteria": {"a": 1}, "inappropriate": "yes"}', "not json", "[]"])
def test_verdict_json_rejects_bad_rows(text: str) -> None:
    assert verdict_from_json(text) is None
    assert verdict_from_json(verdict_to_json(V1)) == V1


# ---------------------------------------------------------------- through the judge


def score_all(judge, clock, completions: list[str], together: bool = False):
    async def main():
        async def one(c):
            try:
                return await judge.score("A bakery", c)
            except JudgeError as err:
                return err

        if together:
            return await asyncio.gather(*(one(c) for c in completions))
        return [await one(c) for c in completions]

    async def driver():
        return await clock.run(main())

    return run(driver())


def test_repeated_sample_is_a_cache_hit() -> None:
    judge, transport, clock = fake_judge(ok)
    first, again, other = score_all(judge, clock, ["bread.com", "bread.com", "buns.com"])
    assert (first.requests, again.requests, other.requests) == (1, 0, 1)
    assert again.trace.cache_hit and not first.trace.cache_hit
    assert again.score == first.score and again.criteria == first.criteria and len(transport.calls) == 2


def test_identical_samples_in_flight_share_one_request() -> None:
    judge, transport, clock = fake_judge(ok)
    results = score_all(judge, clock, ["bread.com"] * 8, together=True)
    assert len(transport.calls) == 1
    assert sum(r.trace.cache_hit for r in results) == 7 and len({r.score for r in results}) == 1


def test_failures_are_never_cached() -> None:
    def handler(rubric):
        return lambda e, b, n: TransportError("judge_http_400") if n == 0 else Reply(verdict_json(rubric), 10)

    judge, transport, clock = fake_judge(handler)
    failed, scored = score_all(judge, clock, ["bread.com", "bread.com"])
    assert isinstance(failed, JudgeError) and scored.requests == 1 and not scored.trace.cache_hit


def test_a_failed_leader_does_not_fail_its_followers() -> None:
    def handler(rubric):
        return lambda e, b, n: TransportError("judge_http_400") if n == 0 else Reply(verdict_json(rubric), 10)

    judge, transport, clock = fake_judge(handler)
    results = score_all(judge, clock, ["bread.com"] * 3, together=True)
    assert isinstance(results[0], JudgeError)
    assert all(not isinstance(r, JudgeError) for r in results[1:])


def test_cache_off_sends_every_sample() -> None:
    judge, transport, clock = fake_judge(ok, cache_size=0)
    score_all(judge, clock, ["bread.com"] * 3, together=True)
    assert len(transport.calls) == 3


def test_disk_cache_is_reused_by_a_rerun_but_not_across_rubric_versions(tmp_path: Path) -> None:
    path = str(tmp_path / "verdicts.sqlite")
    completions = ["bread.com", "buns.io", "Blocked"]
    judge, transport, clock = fake_judge(ok, cache_path=path)
    score_all(judge, clock, completions)
    run(judge.aclose())
    assert len(transport.calls) == 3
    rerun, transport2, clock2 = fake_judge(ok, cache_path=path, cache_size=0)
    results = score_all(rerun, clock2, completions)
    assert transport2.calls == [] and all(r.trace.cache_hit for r in results)
    changed = [CriterionConfig(name="relevance", weight=1, description="Only relevance.")]
    other, transport3, clock3 = fake_judge(ok, cache_path=path, criteria=changed)
    score_all(other, clock3, completions)
    assert len(transport3.calls) == 3


def test_an_unusable_disk_cache_is_switched_off_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = VerdictCache(max_entries=2, path=blocker / "sub" / "v.sqlite")

    async def main():
        await cache.put("k", V1)
        return await cache.get("k"), await cache.get("missing")

    assert run(main()) == (V1, None)  # memory still works
    assert "disk cache off" in caplog.text
