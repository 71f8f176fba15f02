"""Judge ensembles (rewards/judge/ensemble.py): aggregation by hand, members on scripted transports
(three judges, one failing 30 % of its samples), fake members for group scoring, config and keys."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Mapping, Sequence

import pytest
from pydantic import SecretStr, ValidationError

from rewards.client.clock import VirtualClock
from rewards.client.config import RetryConfig
from rewards.client.transport import Reply, TransportError
from rewards.errors import JudgeError, MissingApiKeyError
from rewards.judge.config import JudgeConfig
from rewards.judge.endpoints import member_configs, resolve_api_keys
from rewards.judge.ensemble import ENSEMBLE_FAILED, EnsembleJudge, aggregate, combine
from rewards.judge.llm_judge import JudgeScore
from rewards.judge.rubric import CriterionConfig
from rewards.metrics import InflightGauge, JudgeTrace, member_metrics
from tests.rewards.judge_fakes import ScriptedTransport, verdict_json

CRITERIA = [CriterionConfig(name="quality", weight=1.0, description="How good the answer is.")]
MEMBER_SCORES = {"a": 2.0, "b": 6.0, "c": 10.0}  # criterion scores: rewards 0.2, 0.6, 1.0
CANDIDATES = [f"answer number {i} with some words" for i in range(20)]
FAILING = {c for i, c in enumerate(CANDIDATES) if i % 10 < 3}  # 30 % of the samples


def score(value: float, criteria: dict[str, float] | None = None, flags: dict[str, float] | None = None) -> JudgeScore:
    trace = JudgeTrace(requests=1, latencies_s=[0.1])
    return JudgeScore(value, criteria or {}, 1, flags or {}, trace)


def error(cause: str, requests: int = 4) -> JudgeError:
    return JudgeError(cause, requests=requests, trace=JudgeTrace(requests=requests))


# --------------------------------------------------------------------------
# Aggregation (pure; expected values by hand)
# --------------------------------------------------------------------------


def test_aggregate_by_hand() -> None:
    # weighted mean: (1*0.2 + 2*0.8 + 1*0.5) / 4 = 2.3 / 4
    assert aggregate([0.2, 0.8, 0.5], [1, 2, 1], "mean") == pytest.approx(0.575)
    assert aggregate([0.2, 0.8, 0.5], [1, 2, 1], "median") == pytest.approx(0.5)  # weights do not count
    assert aggregate([0.2, 0.8], [1, 1], "median") == pytest.approx(0.5)  # the middle two's mean
    assert aggregate([0.2, 0.8, 0.5], [1, 2, 1], "min") == pytest.approx(0.2)
    with pytest.raises(ValueError, match="one weight each"):
        aggregate([], [], "mean")


def test_a_failed_member_leaves_the_aggregate_to_the_others() -> None:
    outcomes = {"a": score(0.2), "b": score(0.8), "c": error("judge_http_500")}
    weights = {"a": 1.0, "b": 3.0, "c": 5.0}
    mean = combine(outcomes, weights, "mean")
    assert isinstance(mean, JudgeScore)
    assert mean.score == pytest.approx((0.2 + 3 * 0.8) / 4)  # c's weight is out with c
    assert mean.flags == {"member/a": 0.2, "member/b": 0.8}  # no member/c: it gave no score
    assert combine(outcomes, weights, "min").score == pytest.approx(0.2)  # type: ignore[union-attr]
    assert combine(outcomes, weights, "median").score == pytest.approx(0.5)  # type: ignore[union-attr]
    # every member's requests count; the failure is counted by member and cause
    assert mean.requests == 1 + 1 + 4 and mean.trace.requests == 6
    assert mean.trace.member_requests == {"a": 1, "b": 1, "c": 4}
    assert mean.trace.member_failures == {("c", "judge_http_500"): 1}
    assert len(mean.trace.latencies_s) == 2 and not mean.trace.cache_hit


def test_criteria_and_flags_aggregate_over_the_members_that_give_them() -> None:
    outcomes = {
        "a": score(0.4, {"x": 4.0, "y": 6.0}, {"inappropriate": 1.0}),
        "b": score(0.8, {"x": 8.0}, {"inappropriate": 0.0}),
        "c": score(0.6, {"x": 9.0}, {"inappropriate": 1.0}),
    }
    weights = {"a": 1.0, "b": 1.0, "c": 2.0}
    mean = combine(outcomes, weights, "mean")
    assert isinstance(mean, JudgeScore)
    assert mean.criteria == pytest.approx({"x": (4 + 8 + 2 * 9) / 4, "y": 6.0})  # y: a alone
    assert mean.flags["inappropriate"] == 1.0  # (1 + 0 + 2*1) / 4 = 0.75, rounded to 1
    low = combine(outcomes, weights, "min")
    assert isinstance(low, JudgeScore) and low.criteria == {"x": 4.0, "y": 6.0} and low.flags["inappropriate"] == 0.0


def test_every_member_failing_is_no_score_with_the_causes() -> None:
    same = combine({"a": error("judge_circuit_open", 0), "b": error("judge_circuit_open", 0)}, {"a": 1, "b": 1}, "mean")
    assert isinstance(same, JudgeError) and same.cause == "judge_circuit_open"
    mixed = combine({"a": error("judge_http_500", 4), "b": error("judge_timeout", 2)}, {"a": 1, "b": 1}, "mean")
    assert isinstance(mixed, JudgeError) and mixed.cause == ENSEMBLE_FAILED
    assert "a=judge_http_500" in mixed.detail and "b=judge_timeout" in mixed.detail and "\n" not in str(mixed)
    assert mixed.requests == 6 and isinstance(mixed.trace, JudgeTrace)
    assert mixed.trace.member_failures == {("a", "judge_http_500"): 1, ("b", "judge_timeout"): 1}


def test_member_metrics_by_hand() -> None:
    one = JudgeTrace(member_requests={"a": 1, "c": 4}, member_failures={("c", "judge_http_500"): 1})  # type: ignore[arg-type]
    two = JudgeTrace(member_requests={"a": 1, "c": 1})  # type: ignore[arg-type]
    three = JudgeTrace(member_requests={"a": 0, "c": 0}, member_failures={("c", "judge_circuit_open"): 1})  # type: ignore[arg-type]
    assert member_metrics([one, two, three]) == {
        "judge/member/a/requests": 2.0,
        "judge/member/c/requests": 5.0,
        "judge/member/a/failures": 0.0,
        "judge/member/c/failures": 2.0,
        "judge/member/c/failures/judge_http_500": 1.0,
        "judge/member/c/failures/judge_circuit_open": 1.0,
    }
    assert member_metrics([JudgeTrace(requests=3)]) == {}  # a single judge has none


# --------------------------------------------------------------------------
# Members on scripted transports
# --------------------------------------------------------------------------


def ensemble_config(aggregate_by: str = "mean", **member_fields: object) -> JudgeConfig:
    members = [{"name": n, "base_url": f"http://{n}.test/v1", **member_fields} for n in MEMBER_SCORES]
    return JudgeConfig(
        rubric=None,
        criteria=CRITERIA,
        ensemble=members,  # type: ignore[arg-type]
        ensemble_aggregate=aggregate_by,  # type: ignore[arg-type]
        retry=RetryConfig(initial_backoff_s=0.01, max_backoff_s=0.02),
    )


def member_transport(clock: VirtualClock, name: str, failing: set[str]) -> ScriptedTransport:
    rubric = JudgeConfig(rubric=None, criteria=CRITERIA).rubric_spec()

    def handler(endpoint, body, n) -> Reply:
        user = body["messages"][1]["content"]
        if any(c in user for c in failing):
            raise TransportError("judge_http_500", "injected")
        return Reply(verdict_json(rubric, MEMBER_SCORES[name]), 50)

    return ScriptedTransport(clock, handler, latency_s=0.1)


def scripted_ensemble(
    config: JudgeConfig, failing: Mapping[str, set[str]]
) -> tuple[EnsembleJudge, dict[str, ScriptedTransport], VirtualClock]:
    clock = VirtualClock()
    transports = {n: member_transport(clock, n, set(failing.get(n, set()))) for n in MEMBER_SCORES}
    judge = EnsembleJudge.from_config(config, SecretStr("k"), transports=transports, clock=clock, rng=random.Random(0))
    return judge, transports, clock


def run_all(judge: EnsembleJudge, clock: VirtualClock, candidates: Sequence[str]) -> list[JudgeScore]:
    async def go() -> list[JudgeScore]:
        return list(await asyncio.gather(*(judge.score("a request", c) for c in candidates)))

    return asyncio.run(clock.run(go()))


def test_one_judge_failing_30_percent_leaves_no_sample_unscored() -> None:
    judge, transports, clock = scripted_ensemble(ensemble_config(), {"c": FAILING})
    scores = run_all(judge, clock, CANDIDATES)
    assert len(scores) == len(CANDIDATES)  # every sample scored: none raised
    for candidate, s in zip(CANDIDATES, scores):
        if candidate in FAILING:  # a and b carry it: (0.2 + 0.6) / 2
            assert s.score == pytest.approx(0.4) and s.flags == pytest.approx({"member/a": 0.2, "member/b": 0.6})
            assert s.trace.member_failures == {("c", "judge_http_500"): 1}
            assert s.requests == 1 + 1 + 4  # c tried max_attempts (4) times
        else:
            assert s.score == pytest.approx(0.6)  # (0.2 + 0.6 + 1.0) / 3
            assert s.flags == pytest.approx({"member/a": 0.2, "member/b": 0.6, "member/c": 1.0})
            assert s.requests == 3 and not s.trace.member_failures
        assert s.criteria == pytest.approx({"quality": s.score * 10})
    metrics = member_metrics([s.trace for s in scores])
    assert metrics["judge/member/c/failures"] == len(FAILING) == 6
    assert metrics["judge/member/c/failures/judge_http_500"] == 6
    assert metrics["judge/member/a/failures"] == metrics["judge/member/b/failures"] == 0
    assert metrics["judge/member/c/requests"] == len(transports["c"].calls) == 14 + 6 * 4
    assert sum(s.requests for s in scores) == sum(len(t.calls) for t in transports.values())


def test_members_are_asked_concurrently_and_counted_by_one_gauge() -> None:
    judge, transports, clock = scripted_ensemble(ensemble_config(), {})
    assert all(m.client.gauge is judge.client.gauge for m in judge.members.values())
    with judge.client.gauge.watch() as watch:
        [s] = run_all(judge, clock, CANDIDATES[:1])
    assert watch.peak == 3  # the three members' requests were in flight together
    assert [t.calls[0].sent_at for t in transports.values()] == [0.0, 0.0, 0.0]
    assert s.score == pytest.approx(0.6)


@pytest.mark.parametrize(("how", "expected"), [("median", 0.6), ("min", 0.2)])
def test_median_and_min(how: str, expected: float) -> None:
    judge, _, clock = scripted_ensemble(ensemble_config(how), {})
    assert [s.score for s in run_all(judge, clock, CANDIDATES[:2])] == pytest.approx([expected, expected])


def test_each_member_caches_its_own_verdicts() -> None:
    judge, transports, clock = scripted_ensemble(ensemble_config(), {})
    first, again = run_all(judge, clock, CANDIDATES[:1]) + run_all(judge, clock, CANDIDATES[:1])
    assert not first.trace.cache_hit and again.trace.cache_hit and again.requests == 0
    assert again.flags == first.flags and [len(t.calls) for t in transports.values()] == [1, 1, 1]
    assert len({id(c) for c in judge.caches.values()}) == 3


def test_every_member_failing_raises_judge_error() -> None:
    everyone = {n: set(CANDIDATES) for n in MEMBER_SCORES}
    judge, _, clock = scripted_ensemble(ensemble_config(), everyone)
    with pytest.raises(JudgeError) as info:
        run_all(judge, clock, CANDIDATES[:1])
    assert info.value.cause == "judge_http_500" and info.value.requests == 12
    assert isinstance(info.value.trace, JudgeTrace) and sum(info.value.trace.member_failures.values()) == 3


def test_stats_name_each_member() -> None:
    judge, _, clock = scripted_ensemble(ensemble_config(), {})
    run_all(judge, clock, CANDIDATES[:1])
    stats = judge.stats()
    assert set(stats["members"]) == set(MEMBER_SCORES)  # type: ignore[arg-type]
    assert set(stats["circuit_opened"]) == {f"{n}: http://{n}.test/v1 (relay-heuristic-judge)" for n in MEMBER_SCORES}  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Group scoring with fake members
# --------------------------------------------------------------------------


class _Client:
    def __init__(self) -> None:
        self.gauge = InflightGauge()


class FakeMember:
    """Answers a group with fixed rewards; ``None`` entries fail with ``cause``."""

    def __init__(self, rewards: list[float | None], cause: str = "judge_http_500") -> None:
        self.rewards, self.cause, self.client = rewards, cause, _Client()
        self.calls: list[tuple[str, tuple[str, ...], str]] = []

    async def score_group(self, request_text: str, completions: Sequence[str], group_key: str):
        self.calls.append((request_text, tuple(completions), group_key))
        return [
            JudgeScore(r, {}, 1, {}, JudgeTrace(requests=1)) if r is not None else error(self.cause, 1)
            for r in self.rewards
        ]


def test_score_group_combines_each_completion_over_the_members() -> None:
    members = {"a": FakeMember([0.2, None, None]), "b": FakeMember([0.4, 0.6, None], "judge_timeout")}
    judge = EnsembleJudge(JudgeConfig(ensemble=ensemble_config().ensemble, rubric=None, criteria=CRITERIA), members)  # type: ignore[arg-type]
    out = asyncio.run(judge.score_group("req", ["x", "y", "z"], "g1"))
    assert members["a"].calls == members["b"].calls == [("req", ("x", "y", "z"), "g1")]
    first, second, third = out
    assert isinstance(first, JudgeScore) and first.score == pytest.approx(0.3)
    assert isinstance(second, JudgeScore) and second.score == pytest.approx(0.6) and second.flags == {"member/b": 0.6}
    assert isinstance(third, JudgeError) and third.cause == ENSEMBLE_FAILED and third.requests == 2


# --------------------------------------------------------------------------
# Config and keys
# --------------------------------------------------------------------------


def _error_line(**judge: object) -> str:
    with pytest.raises(ValidationError) as info:
        JudgeConfig(**judge)  # type: ignore[arg-type]
    [err] = info.value.errors()
    return str(err["msg"])


A, B = {"name": "a", "base_url": "http://a/v1"}, {"name": "b", "base_url": "http://b/v1"}


@pytest.mark.parametrize(
    ("judge", "message"),
    [
        ({"ensemble": [A]}, "judge.ensemble needs at least 2 members (one judge: set judge.base_url instead)"),
        ({"ensemble": [A, {**B, "name": "a"}]}, "judge.ensemble names ['a'] more than once"),
        (
            {"ensemble": [A, B], "base_url": "http://j/v1"},
            "judge.ensemble: set base_url/endpoints on each member, not judge.base_url/judge.endpoints",
        ),
        (
            {"ensemble": [A, B], "local_server": {"enabled": True}},
            "judge.ensemble: set local_server on each member, not judge.local_server.enabled",
        ),
        ({"ensemble": [A, {"name": "b"}]}, "judge.ensemble[b] needs base_url, endpoints or local_server.enabled: true"),
        (
            {"ensemble": [A, {**B, "local_server": {"enabled": False}}], "base_url": None},
            "",
        ),
        (
            {"ensemble": [A, {**B, "local_server": {"enabled": True}}]},
            "judge.ensemble[b]: set either base_url/endpoints or local_server.enabled: true, not both",
        ),
        (
            {"ensemble": [A, {**B, "endpoints": [{"base_url": "http://c/v1"}]}]},
            "judge.ensemble[b]: set either base_url or endpoints, not both",
        ),
    ],
)
def test_config_errors_are_one_line(judge: dict, message: str) -> None:
    if not message:  # a member with base_url and its stand-in switched off is fine
        assert JudgeConfig(**judge).has_endpoint
        return
    line = _error_line(**judge)
    assert re.sub(r"^Value error, ", "", line) == message and "\n" not in line


def test_an_ensemble_starts_no_stand_in_of_its_own_and_members_inherit() -> None:
    judge = JudgeConfig(
        model="big",
        api_key_env="K0",
        max_concurrency=5,
        cache_path="/tmp/v.sqlite",
        ensemble=[
            {"name": "a", "base_url": "http://a/v1"},
            {"name": "b", "local_server": {"enabled": True}, "model": "small", "api_key_env": "K1"},
        ],  # type: ignore[list-item]
    )
    assert not judge.uses_local_server and judge.has_endpoint
    (ma, a), (mb, b) = member_configs(judge)
    assert (a.base_url, a.model, a.api_key_env, a.max_concurrency, a.ensemble) == ("http://a/v1", "big", "K0", 5, [])
    assert (b.base_url, b.model, b.api_key_env, b.local_server.enabled) == (None, "small", "K1", True)
    assert (a.cache_path, b.cache_path) == ("/tmp/v.a.sqlite", "/tmp/v.b.sqlite")


def test_a_members_missing_key_names_the_member() -> None:
    judge = JudgeConfig(ensemble=[A, {**B, "api_key_env": "RELAY_B_KEY"}])  # type: ignore[list-item]
    keys = resolve_api_keys(judge, {"RELAY_JUDGE_API_KEY": "ka", "RELAY_B_KEY": "kb"})
    assert {k: v.get_secret_value() for k, v in keys.items()} == {"RELAY_JUDGE_API_KEY": "ka", "RELAY_B_KEY": "kb"}
    with pytest.raises(MissingApiKeyError, match=re.escape("judge.ensemble[b].api_key_env names RELAY_B_KEY")):
        resolve_api_keys(judge, {"RELAY_JUDGE_API_KEY": "ka"})
    with pytest.raises(MissingApiKeyError, match=re.escape("judge.ensemble[a].api_key_env names RELAY_JUDGE_API_KEY")):
        resolve_api_keys(judge, {"RELAY_B_KEY": "kb"})


def test_a_stand_in_member_without_its_url_is_one_line() -> None:
    judge = JudgeConfig(ensemble=[A, {"name": "b", "local_server": {"enabled": True}}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=re.escape("judge.ensemble[b] has no base_url yet")):
        EnsembleJudge.from_config(judge, SecretStr("k"))


def test_group_mode_ensemble_keeps_the_shown_order_flags() -> None:
    """In group mode the members share the shown order (one group key): the ensemble's
    ``position`` and ``shown_of`` are the members' own, and each pass's reward is aggregated
    like the reward (not rounded to 0/1 as the request check is)."""
    from rewards.stand_in.judge_server import JudgeServer, ServerSettings

    with JudgeServer() as a, JudgeServer(settings=ServerSettings(position_bias=2.0)) as b:
        judge = JudgeConfig(
            mode="group",
            group_passes=2,
            check_endpoint=False,
            ensemble=[{"name": "a", "base_url": a.base_url}, {"name": "b", "base_url": b.base_url}],
        )
        names = ["bakeryparis.com", "breadhub.com", "cozybread.com", "parisbakes.com"]

        async def run() -> list[JudgeScore | JudgeError]:
            ensemble = EnsembleJudge.from_config(judge, SecretStr("unused"))
            try:
                return await ensemble.score_group("A cozy bakery in Paris baking bread.", names, "g1")
            finally:
                await ensemble.aclose()

        scores = asyncio.run(run())
    assert all(isinstance(s, JudgeScore) for s in scores)
    flags = [s.flags for s in scores if isinstance(s, JudgeScore)]
    assert sorted(f["position"] for f in flags) == [0, 1, 2, 3]
    assert {f["shown_of"] for f in flags} == {4} and {f["passes"] for f in flags} == {2}
    for f in flags:
        assert f["pass/0"] + f["pass/1"] == pytest.approx(f["member/a"] + f["member/b"])
