"""The endpoints of the judge and of the reward engines (``reward.engines``),
resolved from ``base_url`` or ``endpoints``, with their keys, limits and prices
(an endpoint's own ``price_per_million_*_tokens``, else the service's).

The judge's config and every ``EngineConfig`` have the same endpoint fields
(``ChatService``), so one implementation serves both; ``where`` names the
config section in messages (``judge``, ``reward.engines.geo``).

An ``Endpoint`` carries its API key as a ``SecretStr`` (never in ``repr``) and
a ``display`` name for logs: the base URL without user info, query or
fragment, plus the model. Nothing derived from a key ever enters a message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Protocol

from pydantic import SecretStr

from rewards.client.config import EndpointConfig
from rewards.client.endpoint import Endpoint, display_url
from rewards.client.limits import Limits
from rewards.client.usage import Prices
from rewards.config import EngineConfig
from rewards.errors import MissingApiKeyError
from rewards.judge.config import JudgeConfig, JudgeMemberConfig

_MEMBER_FIELDS = (
    "model",
    "api_key_env",
    "max_concurrency",
    "requests_per_minute",
    "tokens_per_minute",
    "price_per_million_input_tokens",
    "price_per_million_output_tokens",
)
"""The fields of a ``JudgeMemberConfig`` that, when set, replace the judge's."""

__all__ = [
    "ChatService",
    "endpoint_configs",
    "key_variables",
    "keys_from",
    "member_configs",
    "prices_of",
    "read_api_key",
    "resolve_api_keys",
    "resolve_endpoints",
    "service_api_keys",
]


class ChatService(Protocol):
    """The endpoint fields ``JudgeConfig`` and ``EngineConfig`` share."""

    @property
    def base_url(self) -> str | None: ...
    @property
    def endpoints(self) -> Sequence[EndpointConfig]: ...
    @property
    def model(self) -> str: ...
    @property
    def api_key_env(self) -> str: ...
    @property
    def max_concurrency(self) -> int | str: ...  # "auto" for the judge (``JudgeConfig.concurrency``)
    @property
    def requests_per_minute(self) -> float | None: ...
    @property
    def tokens_per_minute(self) -> float | None: ...
    @property
    def burst_s(self) -> float: ...
    @property
    def price_per_million_input_tokens(self) -> float | None: ...
    @property
    def price_per_million_output_tokens(self) -> float | None: ...


def _concurrency(service: ChatService) -> int:
    """The service's per-endpoint concurrency as a number (the judge's may say 'auto')."""
    return service.concurrency if isinstance(service, JudgeConfig) else int(service.max_concurrency)


def endpoint_configs(service: ChatService, where: str = "judge") -> list[EndpointConfig]:
    """``endpoints``, or the one endpoint of ``base_url``, defaults filled in.

    Raises ValueError when neither is set (a local server's URL is filled in
    by the driver before the judge or engine is built).
    """
    raw = list(service.endpoints) or ([EndpointConfig(base_url=service.base_url)] if service.base_url else [])
    if not raw:
        raise ValueError(
            f"{where}.base_url is not set; with a local server the driver must "
            "set it to the started server's URL before building the client"
        )
    return [
        e.model_copy(
            update={
                "model": e.model or service.model,
                "api_key_env": e.api_key_env or service.api_key_env,
                "max_concurrency": e.max_concurrency or _concurrency(service),
                "requests_per_minute": e.requests_per_minute or service.requests_per_minute,
                "tokens_per_minute": e.tokens_per_minute or service.tokens_per_minute,
                **{name: _price(e, service, name) for name in _PRICES},
            }
        )
        for e in raw
    ]


_PRICES = ("price_per_million_input_tokens", "price_per_million_output_tokens")


def _price(endpoint: EndpointConfig, service: ChatService, name: str) -> float:
    """The endpoint's price ``name`` if set (0 is a price: free), else the service's (unset: 0)."""
    own = getattr(endpoint, name)
    return float(own if own is not None else getattr(service, name) or 0.0)


def prices_of(endpoint: EndpointConfig, service: ChatService) -> Prices:
    """What ``endpoint``'s tokens cost: its own prices, else ``service``'s."""
    return Prices(*(_price(endpoint, service, name) for name in _PRICES))


def read_api_key(name: str, environ: Mapping[str, str], where: str) -> SecretStr:
    """The key in ``environ[name]``, surrounding whitespace removed; ``MissingApiKeyError``
    (naming ``where`` and the variable, never a value) when it is unset or empty."""
    value = environ.get(name, "")
    if not value.strip():
        raise MissingApiKeyError(
            f"{where} names {name}, which is not set in the environment "
            "(or is empty); export the API key in that variable"
        )
    return SecretStr(value.strip())


def resolve_api_keys(
    judge: JudgeConfig, environ: Mapping[str, str] | None = None, engines: Mapping[str, EngineConfig] | None = None
) -> dict[str, SecretStr]:
    """The key of every variable the judge's endpoints and the ``engines``' endpoints
    name (``key_variables``), read from ``environ`` (default ``os.environ``);
    ``MissingApiKeyError`` (naming the config key and the variable) for one unset or empty."""
    environ = os.environ if environ is None else environ
    keys = service_api_keys(judge, environ, "judge")
    for name, engine in (engines or {}).items():
        keys.update(service_api_keys(engine, environ, f"reward.engines.{name}"))
    return keys


def service_api_keys(service: ChatService, environ: Mapping[str, str], where: str) -> dict[str, SecretStr]:
    """The keys of one judge or engine (``where`` names its config section in messages)."""
    return keys_from(service, {}, environ, where)


def member_configs(judge: JudgeConfig) -> list[tuple[JudgeMemberConfig, JudgeConfig]]:
    """Each member of ``judge.ensemble`` with its own ``JudgeConfig``: the judge's, with the member's
    endpoint (``base_url``/``endpoints``, filled in by the driver for a stand-in) and every field it sets
    in place of the judge's, no ensemble; a ``cache_path`` gets the member's name (``x.sqlite`` ->
    ``x.<name>.sqlite``) so that members never read each other's verdicts. Empty without an ensemble."""
    out = []
    for member in judge.ensemble:
        update: dict[str, object] = {f: getattr(member, f) for f in _MEMBER_FIELDS if getattr(member, f) is not None}
        update.update(base_url=member.base_url, endpoints=list(member.endpoints), ensemble=[])
        update["local_server"] = member.local_server or judge.local_server
        if judge.cache_path is not None:
            path = PurePath(judge.cache_path)
            update["cache_path"] = str(path.with_name(f"{path.stem}.{member.name}{path.suffix}"))
        out.append((member, judge.model_copy(update=update)))
    return out


def keys_from(
    service: ChatService, given: Mapping[str, SecretStr], environ: Mapping[str, str], where: str
) -> dict[str, SecretStr]:
    """The keys of one judge or engine: from ``given`` (variable name -> key), else read from ``environ``
    (an ensemble's: every member's, named ``<where>.ensemble[<name>]`` in messages)."""
    if isinstance(service, JudgeConfig) and service.ensemble:
        keys: dict[str, SecretStr] = {}
        for member, config in member_configs(service):
            keys.update(keys_from(config, given, environ, f"{where}.ensemble[{member.name}]"))
        return keys
    return {
        name: given[name]
        if isinstance(given.get(name), SecretStr)
        else read_api_key(name, environ, _where(service, name, where))
        for name in key_variables(service)
    }


def _where(service: ChatService, name: str, where: str) -> str:
    return f"{where}.api_key_env" if name == service.api_key_env else f"{where}.endpoints[*].api_key_env"


def key_variables(service: ChatService) -> list[str]:
    """Names of the environment variables holding the endpoints' keys, first one first
    (an ensemble's: its members', in member order)."""
    if isinstance(service, JudgeConfig) and service.ensemble:
        return list(dict.fromkeys(n for _, config in member_configs(service) for n in key_variables(config)))
    names = [e.api_key_env or service.api_key_env for e in service.endpoints] or [service.api_key_env]
    return list(dict.fromkeys(names))


def resolve_endpoints(service: ChatService, keys: Mapping[str, SecretStr], where: str = "judge") -> list[Endpoint]:
    """The endpoints of a judge or engine with their keys (``keys`` maps variable names to keys)."""
    endpoints = []
    for i, config in enumerate(endpoint_configs(service, where)):
        env = config.api_key_env or service.api_key_env
        key = keys.get(env)
        if not isinstance(key, SecretStr):
            raise MissingApiKeyError(
                f"no API key for the variable {env} ({where} endpoint {display_url(config.base_url)})"
            )
        limits = Limits(
            max_concurrency=config.max_concurrency or _concurrency(service),
            requests_per_minute=config.requests_per_minute,
            tokens_per_minute=config.tokens_per_minute,
            burst_s=service.burst_s,
        )
        endpoints.append(
            Endpoint(i, config.base_url, config.model or service.model, env, limits, key, prices_of(config, service))
        )
    return endpoints
