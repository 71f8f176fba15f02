"""RewardComposer: registry, user functions by dotted path, weighting, failures."""

from __future__ import annotations

import asyncio
import threading

import pytest
from pydantic import SecretStr

from rewards.composer import REGISTERED_TERMS, RewardComposer, ScoredParts
from rewards.config import RewardConfig, RewardTermConfig
from rewards.errors import RewardError
from rewards.judge.config import JudgeConfig
from rewards.judge.llm_judge import weighted_score
from rewards.stand_in.judge_server import JudgeServer, ServerSettings, heuristic_verdict

DESCRIPTION = "A country music bar in Nashville with live bands every night."
THREADS_SEEN: list[str] = []


# User reward functions, loaded by dotted path f"{__name__}:<function>".


def sync_term(prompt: str, completion: str) -> float:
    THREADS_SEEN.append(threading.current_thread().name)
    return float(len(completion))


async def async_term(prompt: str, completion: str) -> float:
    await asyncio.sleep(0)
    return 0.25


def none_term(prompt: str, completion: str) -> float | None:
    return None


def raising_term(prompt: str, completion: str) -> float:
    raise ZeroDivisionError("boom")


def reward_error_term(prompt: str, completion: str) -> float:
    raise RewardError("my_service_down")


def nan_term(prompt: str, completion: str) -> float:
    return float("nan")


def string_term(prompt: str, completion: str) -> str:
    return "7"


NOT_CALLABLE = 3
LOOP_IS_FREE = threading.Event()


def waits_for_the_loop(prompt: str, completion: str) -> float | None:
    """Returns 1 only if an async term could run on the event loop meanwhile."""
    return 1.0 if LOOP_IS_FREE.wait(timeout=10) else None


async def frees_the_loop(prompt: str, completion: str) -> float:
    await asyncio.sleep(0)
    LOOP_IS_FREE.set()
    return 0.0


def path(function: str) -> str:
    return f"{__name__}:{function}"


def composer(
    *terms: tuple[str, float], judge: JudgeConfig | None = None, key: SecretStr | None = None
) -> RewardComposer:
    config = RewardConfig(terms=[RewardTermConfig(name=n, weight=w) for n, w in terms])
    return RewardComposer(config, judge, key)


def score(comp: RewardComposer, completion: str = "nashvillecountry.com") -> ScoredParts:
    """Score one completion in a fresh event loop, then close the judge client."""

    async def run() -> ScoredParts:
        try:
            return await comp.score(DESCRIPTION, completion)
        finally:
            await comp.aclose()

    return asyncio.run(run())


# ---------------------------------------------------------------- construction


def test_unknown_term_names_the_term_and_the_registry() -> None:
    with pytest.raises(ValueError) as info:
        composer(("domian_format", 1.0))
    message = str(info.value)
    assert "'domian_format'" in message
    for name in REGISTERED_TERMS:
        assert name in message


@pytest.mark.parametrize(
    ("terms", "match"),
    [
        ([("domain_format", 1.0), ("domain_format", 0.5)], "more than once"),
        ([("domain_format", 0.0)], "non-zero weight"),
        ([("no_such_module_xyz:f", 1.0)], "cannot import module 'no_such_module_xyz'"),
        ([(path("missing_function"), 1.0)], "has no attribute 'missing_function'"),
        ([(path("NOT_CALLABLE"), 1.0)], "is not callable"),
        ([("a:b:c", 1.0)], "package.module:function"),
        ([("judge", 1.0)], "needs a judge config and an API key"),
    ],
)
def test_construction_errors(terms: list[tuple[str, float]], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        composer(*terms)


# ---------------------------------------------------------------- rules and user functions


def test_rules_are_weighted_and_summed() -> None:
    long_answer = "nashvillecountry.com " * 6  # 125 stripped characters
    comp = composer(("domain_format", 2.0), ("completion_length_penalty", 0.5))
    assert score(comp) == ScoredParts(2.0, None, {"domain_format": 1.0, "completion_length_penalty": 0.0})
    parts = score(comp, long_answer)
    # 2*0 + 0.5 * -(125-40)/160
    assert parts.reward == pytest.approx(0.5 * -(85 / 160))
    assert parts.error is None


def test_sync_user_function_runs_in_a_worker_thread() -> None:
    THREADS_SEEN.clear()
    parts = score(composer((path("sync_term"), 0.1)), "abcd")
    assert parts.reward == pytest.approx(0.4)
    assert parts.terms == {path("sync_term"): 4.0}
    assert THREADS_SEEN and THREADS_SEEN[0] != threading.main_thread().name


def test_a_blocking_sync_function_does_not_block_the_event_loop() -> None:
    LOOP_IS_FREE.clear()
    parts = score(composer((path("waits_for_the_loop"), 1.0), (path("frees_the_loop"), 1.0)))
    assert parts.reward == 1.0 and parts.error is None
    assert set(parts.term_seconds) == {path("waits_for_the_loop"), path("frees_the_loop")}
    assert all(t >= 0 for t in parts.term_seconds.values())


def test_async_user_function() -> None:
    parts = score(composer((path("async_term"), 2.0), ("domain_format", 1.0)))
    assert parts.reward == pytest.approx(2.0 * 0.25 + 1.0)


@pytest.mark.parametrize(
    ("function", "cause"),
    [
        ("none_term", f"{__name__}:none_term_no_score"),
        ("raising_term", f"{__name__}:raising_term_error:ZeroDivisionError"),
        ("reward_error_term", "my_service_down"),
        ("nan_term", f"{__name__}:nan_term_invalid_value"),
        ("string_term", f"{__name__}:string_term_invalid_value"),
    ],
)
def test_a_failing_weighted_term_unscores_the_sample(function: str, cause: str) -> None:
    parts = score(composer(("domain_format", 1.0), (path(function), 1.0)))
    assert parts.reward is None
    assert parts.error == cause
    assert parts.terms == {"domain_format": 1.0, path(function): None}


def test_a_failing_zero_weight_term_is_reported_but_does_not_unscore() -> None:
    parts = score(composer(("domain_format", 1.0), (path("raising_term"), 0.0)))
    assert parts.reward == 1.0 and parts.error is None
    assert parts.terms[path("raising_term")] is None


# ---------------------------------------------------------------- judge term


def test_judge_and_rule_combined_by_hand() -> None:
    with JudgeServer() as srv:
        judge = JudgeConfig(base_url=srv.base_url)
        comp = composer(("judge", 0.8), ("domain_format", 0.2), judge=judge, key=SecretStr("k"))
        parts = score(comp)
    verdict = heuristic_verdict(DESCRIPTION, "nashvillecountry.com", ["relevance", "memorability", "length"])
    criteria = {k: v["score"] for k, v in verdict.items()}
    assert parts.judge_flags == {"inappropriate": 0.0, "blocked": 0.0}
    judge_value = weighted_score(criteria, judge.rubric_spec().criteria)
    assert parts.criteria == criteria
    assert parts.terms == {"judge": pytest.approx(judge_value), "domain_format": 1.0}
    assert parts.reward == pytest.approx(0.8 * judge_value + 0.2 * 1.0)
    assert parts.judge_requests == 1 and parts.judge_error is None


def test_judge_failure_is_no_score_never_zero() -> None:
    with JudgeServer(settings=ServerSettings(fail_rate=1.0)) as srv:
        judge = JudgeConfig(base_url=srv.base_url, retry={"max_attempts": 2, "initial_backoff_s": 0.01})
        comp = composer(("judge", 1.0), ("domain_format", 1.0), judge=judge, key=SecretStr("k"))
        parts = score(comp)
    assert parts.reward is None
    assert parts.error == parts.judge_error == "judge_http_500"
    assert parts.terms == {"judge": None, "domain_format": 1.0}
    assert parts.criteria == {} and parts.judge_requests == 2
    assert dict(parts.judge_trace.retries) == {"judge_http_500": 1}
