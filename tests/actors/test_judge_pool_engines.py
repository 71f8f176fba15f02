"""JudgePool with a reward term that calls an LLM engine several times per sample, against a
faulty stand-in endpoint in this process (no Ray): limits measured at the server, failures
unscored with their cause (never 0), every request accounted for."""

from __future__ import annotations

import asyncio
import http.client
import json
import re

import pytest
from pydantic import BaseModel, SecretStr

from actors.judge_pool import JudgePool
from actors.messages import PromptItem, RolloutResult, Sample, ScoreResult
from rewards.config import EngineConfig, RewardConfig, RewardTermConfig
from rewards.context import RewardContext
from rewards.judge.config import JudgeConfig
from rewards.metrics import aggregate_judge_metrics
from rewards.stand_in.server import StandInServer, StandInSettings

SECRET = "sk-flaky-engine-NEVER-PRINT-12"
CALLS_PER_SAMPLE = 3
TERM = f"{__name__}:three_calls"


class Value(BaseModel):
    value: float


async def three_calls(prompt: str, completion: str, ctx: RewardContext, *, scale: float = 1.0) -> float:
    """Three sequential JSON calls per sample; the stand-in answers call k with value k, so a
    scored sample's reward is scale * (0 + 1 + 2) / 3 = scale."""
    llm = ctx.llm("flaky")
    total = 0.0
    for k in range(CALLS_PER_SAMPLE):
        reply = await llm.chat_json([{"role": "user", "content": f"{ctx.row['id']}|{completion}|{k}"}], Value)
        total += reply.value
    return scale * total / CALLS_PER_SAMPLE


def respond(messages: list[dict], model: str) -> str:
    return json.dumps({"value": float(messages[-1]["content"].rsplit("|", 1)[1])})


def rollout(prompts: int, group: int) -> RolloutResult:
    samples = []
    for p in range(prompts):
        item = PromptItem(f"p{p}", p, f"prompt {p}", [1, 2], fields={"id": f"row{p}"})
        samples += [Sample(item, f"g{p}", i, f"completion {i}", [5], [-0.1], 0, False) for i in range(group)]
    return RolloutResult(batch_index=0, samples=samples, generate_s=0.0, worker_id=0)


def server_stats(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/stats", headers={"Authorization": f"Bearer {SECRET}"})
    stats = json.loads(conn.getresponse().read())
    conn.close()
    return stats


def test_faulty_engine_limits_hold_failures_are_unscored_and_counted() -> None:
    settings = StandInSettings(
        api_key=SecretStr(SECRET),
        latency_s=0.02,
        status_rates={429: 0.2, 503: 0.15},
        retry_after_s=0.0,
        malformed_rate=0.15,
        seed=7,
    )
    with StandInServer(respond, settings=settings) as srv:
        engine = EngineConfig(
            base_url=srv.base_url,
            model="flaky-model",
            api_key_env="FLAKY_KEY",
            max_concurrency=3,
            retry={"max_attempts": 3, "initial_backoff_s": 0.01, "max_backoff_s": 0.02},
            circuit_breaker={"failure_threshold": 5, "cooldown_s": 0.05},
            malformed_retries=1,
            price_per_million_input_tokens=1e6,  # $1 per prompt token, $2 per completion token
            price_per_million_output_tokens=2e6,
        )
        reward = RewardConfig(terms=[RewardTermConfig(name=TERM, options={"scale": 2.0})], engines={"flaky": engine})
        pool = JudgePool(
            JudgeConfig(base_url=srv.base_url, api_key_env="FLAKY_KEY"), reward, {"FLAKY_KEY": SecretStr(SECRET)}
        )  # the judge's endpoint is checked, never called
        calls = [rollout(4, 4), rollout(4, 4)]  # two rollout calls scored at once share the limits

        async def run() -> list[ScoreResult]:
            try:
                await pool.check()
                return await asyncio.gather(*(pool.score(c) for c in calls))
            finally:
                await pool.close()

        results = asyncio.run(run())
        stats = server_stats(srv.port)
    scored = [s for r in results for s in r.scored]
    assert len(scored) == 32
    # identical prompts and completions in both calls share requests through the cache
    unscored = [s for s in scored if s.reward is None]
    assert unscored and len(unscored) < len(scored)
    assert all(s.reward == 2.0 for s in scored if s.reward is not None)  # never 0, never partial
    cause = re.compile(r"^engine flaky: (HTTP (429|503)|malformed reply) after \d+ attempts$")
    assert all(cause.match(s.reward_error) for s in unscored), {s.reward_error for s in unscored}
    assert all(s.terms == {TERM: None} for s in unscored)
    # limits at the server: never more than max_concurrency in flight
    assert stats["peak_inflight"] <= 3
    metrics = aggregate_judge_metrics(r.judge_metrics for r in results)
    assert metrics["engine/flaky/peak_inflight"] <= 3
    assert metrics["engine/flaky/requests"] == stats["requests"] == metrics[f"term/{TERM}/llm_calls"]
    assert metrics["engine/flaky/retries"] > 0 and metrics["engine/flaky/failures"] >= len(unscored)
    assert metrics[f"term/{TERM}/failures"] == len(unscored)
    assert metrics[f"term/{TERM}/mean"] == 2.0
    assert metrics["engine/flaky/calls"] + metrics["engine/flaky/cache_hits"] >= len(scored)
    assert pool.stats()["unscored"] == len(unscored)
    # spending: every engine reply at the engine's prices (the stand-in reports words as tokens), the
    # judge's none (never called); the pool's running total holds every finished call's
    tokens_in, tokens_out = metrics["engine/flaky/input_tokens"], metrics["engine/flaky/output_tokens"]
    assert tokens_in > 0 and tokens_out > 0 and metrics["judge/usage_estimated"] == 0
    assert metrics["engine/flaky/cost_usd"] == pytest.approx(tokens_in * 1.0 + tokens_out * 2.0)
    assert metrics["judge/cost_usd"] == metrics["engine/flaky/cost_usd"]
    assert pool.stats()["cost_usd"] == pytest.approx(metrics["judge/cost_usd"]) == pool.spent()[1]
    assert SECRET not in json.dumps(metrics) + json.dumps(pool.stats()) + repr(pool)
