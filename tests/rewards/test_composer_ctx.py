"""RewardComposer with terms that take ctx: detection by signature, options, engines, their config and keys."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping

import pytest
from judge_fakes import ScriptedTransport
from pydantic import SecretStr, ValidationError

from rewards.client.clock import VirtualClock
from rewards.client.endpoint import Endpoint
from rewards.client.transport import Reply, TransportError
from rewards.composer import RewardComposer, ScoredParts
from rewards.config import EngineConfig, RewardConfig, RewardTermConfig
from rewards.context import RewardContext
from rewards.errors import JudgeUnreachableError, MissingApiKeyError
from rewards.judge.config import JudgeConfig
from rewards.judge.endpoints import resolve_api_keys
from rewards.terms import takes_context

SEEN: list[object] = []


def plain(prompt: str, completion: str) -> float:
    return 1.0


def scaled(prompt: str, completion: str, scale: float = 1.0) -> float:
    return scale


def sync_ctx(prompt: str, completion: str, ctx: RewardContext) -> float:
    SEEN.append(dict(ctx.row))
    return float(len(ctx.llm("e").chat_sync([{"role": "user", "content": completion}])))


async def async_ctx(prompt: str, completion: str, ctx: RewardContext, *, bonus: float = 0.0) -> float:
    reply = await ctx.llm("e").chat([{"role": "user", "content": completion}])
    return float(len(reply)) + bonus


async def keyword_ctx(prompt: str, completion: str, *, ctx: RewardContext) -> float:
    return float(ctx.row["n"])


async def asks_the_judge(prompt: str, completion: str, ctx: RewardContext) -> float:
    return float(len(await ctx.llm().chat([{"role": "user", "content": completion}])))


def path(name: str) -> str:
    return f"{__name__}:{name}"


def test_context_is_detected_by_signature() -> None:
    assert not takes_context(plain) and not takes_context(scaled)
    assert takes_context(sync_ctx) and takes_context(async_ctx) and takes_context(keyword_ctx)
    assert not takes_context(len)  # no signature: a plain two-argument call


def composer(
    *terms: RewardTermConfig,
    engines: dict | None = None,
    judge: JudgeConfig | None = None,
    key: object = None,
    handler=None,
) -> tuple[RewardComposer, ScriptedTransport, VirtualClock]:
    clock = VirtualClock()

    def echo(endpoint: Endpoint, body: Mapping[str, object], n: int) -> Reply:
        return Reply("<" + body["messages"][-1]["content"] + ">", 5)  # type: ignore[index]

    transport = ScriptedTransport(clock, handler or echo, 0.1)
    engines = (
        engines
        if engines is not None
        else {"e": EngineConfig(base_url="http://e.test/v1", model="m", api_key_env="E_KEY")}
    )
    reward = RewardConfig(terms=list(terms), engines=engines)
    comp = RewardComposer(
        reward,
        judge,
        key if key is not None else {"E_KEY": SecretStr("k")},
        transport=transport,
        clock=clock,
        rng=random.Random(0),
    )
    return comp, transport, clock


def score(comp: RewardComposer, clock: VirtualClock, completion: str, row: Mapping[str, object]) -> ScoredParts:
    async def main() -> ScoredParts:
        try:
            return await clock.run(comp.score("p", completion, row))
        finally:
            await comp.aclose()

    return asyncio.run(main())


def test_sync_and_async_ctx_terms_with_options_and_rows() -> None:
    SEEN.clear()
    comp, transport, clock = composer(
        RewardTermConfig(name=path("sync_ctx"), weight=1.0),
        RewardTermConfig(name=path("async_ctx"), weight=0.5, options={"bonus": 2}),
        RewardTermConfig(name=path("keyword_ctx"), weight=0.0),
        RewardTermConfig(name=path("scaled"), weight=1.0, options={"scale": 3}),
    )
    parts = score(comp, clock, "abc", {"n": 4})
    # "<abc>" has 5 characters: 1*5 + 0.5*(5+2) + 0*4 + 1*3; the two identical calls share one request
    assert parts.terms == {path("sync_ctx"): 5.0, path("async_ctx"): 7.0, path("keyword_ctx"): 4.0, path("scaled"): 3.0}
    assert parts.reward == pytest.approx(5 + 3.5 + 3)
    assert SEEN == [{"n": 4}] and len(transport.calls) == 1
    usage = parts.term_usage
    assert set(usage) == {path("sync_ctx"), path("async_ctx"), path("keyword_ctx")}
    assert usage[path("sync_ctx")].llm_calls + usage[path("async_ctx")].llm_calls == 1


def test_a_failed_llm_call_unscores_the_sample_with_its_cause() -> None:
    fail = TransportError("judge_http_503", "HTTP 503")
    comp, transport, clock = composer(
        RewardTermConfig(name=path("async_ctx")),
        RewardTermConfig(name=path("plain")),
        handler=lambda endpoint, body, n: fail,
    )
    parts = score(comp, clock, "abc", {})
    assert parts.reward is None and parts.error == "engine e: HTTP 503 after 4 attempts"
    assert parts.terms == {path("async_ctx"): None, path("plain"): 1.0}
    assert parts.term_usage[path("async_ctx")].engines["e"].requests == 4


def test_ctx_llm_judge_shares_the_judge_terms_client() -> None:
    judge = JudgeConfig(base_url="http://judge.test/v1")
    comp, _, _ = composer(
        RewardTermConfig(name="judge"),
        RewardTermConfig(name=path("asks_the_judge")),
        judge=judge,
        key=SecretStr("judge-key"),
        engines={},
    )
    assert comp.engines["judge"].client is comp.judge.client
    alone, _, _ = composer(
        RewardTermConfig(name=path("asks_the_judge")), judge=judge, key=SecretStr("judge-key"), engines={}
    )
    assert alone.judge is None and alone.engines["judge"].models == ["relay-heuristic-judge"]
    without, _, _ = composer(RewardTermConfig(name=path("plain")), judge=judge, key=SecretStr("judge-key"), engines={})
    assert "judge" not in without.engines  # no term takes ctx: nothing to build


@pytest.mark.parametrize(
    ("term", "match"),
    [
        (
            RewardTermConfig(name=path("async_ctx"), options={"bonsu": 1}),
            r"unknown option\(s\) \['bonsu'\]; the function takes \['bonus'\]",
        ),
        (
            RewardTermConfig(name=path("plain"), options={"x": 1}),
            r"unknown option\(s\) \['x'\]; the function takes \[\]",
        ),
        (RewardTermConfig(name="domain_format", options={"x": 1}), "'domain_format' takes no options"),
    ],
)
def test_bad_options_fail_construction(term: RewardTermConfig, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        composer(term)


def test_an_engines_key_is_read_from_the_environment_naming_its_variable(monkeypatch) -> None:
    monkeypatch.delenv("E_KEY", raising=False)
    with pytest.raises(MissingApiKeyError, match=r"^reward.engines.e.api_key_env names E_KEY, which is not set"):
        composer(RewardTermConfig(name=path("plain")), key={})
    monkeypatch.setenv("E_KEY", "from-env")
    comp, _, _ = composer(RewardTermConfig(name=path("plain")), key={})
    assert comp.engines["e"].client.endpoints[0].api_key.get_secret_value() == "from-env"


def test_resolve_api_keys_covers_the_engines() -> None:
    engines = {"geo": EngineConfig(base_url="http://g/v1", model="m", api_key_env="GEO_KEY")}
    keys = resolve_api_keys(JudgeConfig(base_url="http://j/v1"), {"RELAY_JUDGE_API_KEY": "a", "GEO_KEY": "b"}, engines)
    assert {k: v.get_secret_value() for k, v in keys.items()} == {"RELAY_JUDGE_API_KEY": "a", "GEO_KEY": "b"}
    with pytest.raises(MissingApiKeyError, match="reward.engines.geo.api_key_env names GEO_KEY"):
        resolve_api_keys(JudgeConfig(base_url="http://j/v1"), {"RELAY_JUDGE_API_KEY": "a"}, engines)


def test_check_endpoint_names_an_unreachable_engine(refused_port: int) -> None:
    url = f"http://127.0.0.1:{refused_port}/v1"
    reward = RewardConfig(
        terms=[RewardTermConfig(name=path("async_ctx"))],
        engines={"geo": EngineConfig(base_url=url, model="m", api_key_env="GEO_KEY")},
    )
    comp = RewardComposer(reward, None, {"GEO_KEY": SecretStr("sk-geo-SECRET-1")})
    with pytest.raises(JudgeUnreachableError, match=f"^engine geo endpoint {url} is unreachable: connection failed"):
        asyncio.run(comp.check_endpoint())


@pytest.mark.parametrize(
    ("engine", "match"),
    [
        ({"model": "m", "api_key_env": "K"}, "set exactly one of base_url, endpoints or local_server"),
        ({"model": "m", "api_key_env": "K", "base_url": "http://x", "local_server": "scripts.x"}, "set exactly one"),
        ({"model": "m", "api_key_env": "K", "local_server": "scripts/geo.py"}, "is not a module path"),
        ({"model": "m", "api_key_env": "K", "base_url": "http://x", "local_server_args": ["-x"]}, "needs local_server"),
        ({"base_url": "http://x", "api_key_env": "K"}, "model"),
    ],
)
def test_engine_config_errors(engine: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        EngineConfig(**engine)


@pytest.mark.parametrize(("name", "match"), [("judge", "reserved"), ("my engine", "not a valid engine name")])
def test_engine_names(name: str, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        RewardConfig(engines={name: EngineConfig(base_url="http://x", model="m", api_key_env="K")})
