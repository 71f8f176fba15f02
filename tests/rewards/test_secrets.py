"""The judge API keys never reach logs, exceptions, metrics or configs, also
through retries, Retry-After waits, timeouts and circuit-breaker transitions."""

from __future__ import annotations

import asyncio
import logging
import pickle

import pytest
from pydantic import SecretStr

from actors.judge_pool import JudgePool
from actors.messages import PromptItem, RolloutResult, Sample
from rewards.client.config import CircuitBreakerConfig, EndpointConfig, RetryConfig
from rewards.client.endpoint import display_url
from rewards.config import RewardConfig
from rewards.errors import JudgeError, JudgeUnreachableError, MissingApiKeyError
from rewards.judge.config import JudgeConfig
from rewards.judge.endpoints import resolve_api_keys, resolve_endpoints
from rewards.judge.llm_judge import JudgeReward, check_endpoint, resolve_api_key
from rewards.stand_in.judge_server import JudgeServer, ServerSettings

SECRET = "sk-live-SECRET-d41d8cd98f00b204"
OTHER_SECRET = "sk-other-SECRET-e3b0c44298fc1c14"


def texts_of(*objects: object) -> list[str]:
    out = []
    for obj in objects:
        out += [str(obj), repr(obj)]
        if isinstance(obj, BaseException):
            out += [str(obj.__cause__), str(obj.__context__)]
    return out


def rollout(n: int) -> RolloutResult:
    prompt = PromptItem("p0", 0, "A bakery in Portland that sells sourdough bread.", [1, 2])
    samples = [Sample(prompt, "g0", i, f"portlandbake{i}.com", [5], [-0.1], 0, False) for i in range(n)]
    return RolloutResult(batch_index=0, samples=samples, generate_s=0.1, worker_id=0)


def test_keys_stay_out_of_logs_errors_and_metrics_through_retries_and_the_breaker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = ServerSettings(
        api_key=SecretStr(SECRET),
        status_rates={429: 0.3, 503: 0.3},
        retry_after_s=0.01,
        hang_rate=0.1,
        hang_s=2.0,
        flaky_malformed_rate=0.1,
        seed=3,
    )
    with JudgeServer(settings=settings) as server:
        judge = JudgeConfig(
            base_url=server.base_url,
            timeout_s=0.3,
            malformed_retries=1,
            retry=RetryConfig(initial_backoff_s=0.01, max_attempts=3, deadline_s=5),
            circuit_breaker=CircuitBreakerConfig(failure_threshold=2, cooldown_s=0.05),
        )
        pool = JudgePool(judge, RewardConfig(), SecretStr(SECRET))

        async def main():
            try:
                return await pool.score(rollout(24))
            finally:
                await pool.close()

        result = asyncio.run(main())
    metrics = result.judge_metrics
    assert metrics["judge/retries"] > 0  # the faults really were retried ...
    assert any(r.getMessage().find("circuit opened") >= 0 for r in caplog.records)  # ... and tripped the breaker
    texts = [caplog.text, repr(result), str(pool.stats()), str(metrics), str(pickle.dumps(result))]
    for text in texts:
        assert SECRET not in text


def test_rejected_key_errors_never_hold_a_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = SECRET + "-wrong"
    with JudgeServer(settings=ServerSettings(api_key=SecretStr(SECRET))) as server:
        judge = JudgeReward(JudgeConfig(base_url=server.base_url), SecretStr(wrong))

        async def main():
            try:
                await judge.score("A bakery", "bread.com")
            finally:
                await judge.aclose()

        with pytest.raises(JudgeError) as scored:
            asyncio.run(main())
        with pytest.raises(JudgeUnreachableError) as checked:
            asyncio.run(check_endpoint(JudgeConfig(base_url=server.base_url), SecretStr(wrong)))
    assert scored.value.cause == "judge_http_401" and "HTTP 401" in str(checked.value)
    for text in texts_of(scored.value, checked.value) + [caplog.text]:
        assert SECRET not in text and wrong not in text
    assert scored.value.__cause__ is None and checked.value.__cause__ is None


def test_urls_are_shown_without_user_info_or_query(refused_port: int) -> None:
    url = f"https://user:{SECRET}@judge.example:8443/v1?key={OTHER_SECRET}#frag"
    assert display_url(url) == "https://judge.example:8443/v1"
    bad = f"http://user:{SECRET}@127.0.0.1:{refused_port}/v1"
    with pytest.raises(JudgeUnreachableError) as info:
        asyncio.run(check_endpoint(JudgeConfig(base_url=bad, timeout_s=2), SecretStr(OTHER_SECRET)))
    for text in texts_of(info.value):
        assert SECRET not in text and OTHER_SECRET not in text


def test_per_endpoint_keys_come_from_their_variables_and_stay_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    judge = JudgeConfig(
        endpoints=[
            EndpointConfig(base_url="http://a.test/v1"),
            EndpointConfig(base_url="http://b.test/v1", api_key_env="RELAY_OTHER_KEY"),
        ]
    )
    environ = {"RELAY_JUDGE_API_KEY": SECRET, "RELAY_OTHER_KEY": f"  {OTHER_SECRET}\n"}
    keys = resolve_api_keys(judge, environ)
    assert {k: v.get_secret_value() for k, v in keys.items()} == {
        "RELAY_JUDGE_API_KEY": SECRET,
        "RELAY_OTHER_KEY": OTHER_SECRET,
    }
    assert resolve_api_key(judge, environ).get_secret_value() == SECRET
    endpoints = resolve_endpoints(judge, keys)
    assert [e.api_key.get_secret_value() for e in endpoints] == [SECRET, OTHER_SECRET]
    monkeypatch.setenv("RELAY_OTHER_KEY", OTHER_SECRET)
    reward = JudgeReward(judge, SecretStr(SECRET))  # the second key is read from the environment
    for text in texts_of(*endpoints, reward, judge, judge.model_dump()):
        assert SECRET not in text and OTHER_SECRET not in text
    with pytest.raises(MissingApiKeyError, match="RELAY_OTHER_KEY") as info:
        resolve_api_keys(judge, {"RELAY_JUDGE_API_KEY": SECRET})
    assert SECRET not in str(info.value)
