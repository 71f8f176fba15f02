"""The judge's endpoints, resolved from ``judge.base_url`` or ``judge.endpoints``,
with their keys and limits.

An ``Endpoint`` carries its API key as a ``SecretStr`` (never in ``repr``) and
a ``display`` name for logs: the base URL without user info, query or
fragment, plus the model. Nothing derived from a key ever enters a message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from rewards.config import EndpointConfig, JudgeConfig
from rewards.errors import MissingApiKeyError
from rewards.limits import Limits

__all__ = ["Endpoint", "display_url", "endpoint_configs", "key_variables", "read_api_key", "resolve_api_keys", "resolve_endpoints"]


def display_url(url: str) -> str:
    """``url`` without user info, query string or fragment (where keys sometimes hide)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass(frozen=True)
class Endpoint:
    """One endpoint serving the judge. ``key`` identifies it (limiter and breaker);
    ``index`` is its position in the config (ties in balancing go to the lowest)."""

    index: int
    base_url: str
    model: str
    api_key_env: str
    limits: Limits
    api_key: SecretStr = field(repr=False, compare=False)

    @property
    def key(self) -> str:
        return f"{self.index}|{self.base_url}|{self.model}"

    @property
    def display(self) -> str:
        """A key-free name for logs: ``<url> (<model>)``."""
        return f"{display_url(self.base_url)} ({self.model})"


def endpoint_configs(judge: JudgeConfig) -> list[EndpointConfig]:
    """``judge.endpoints``, or the one endpoint of ``judge.base_url``, defaults filled in.

    Raises ValueError when neither is set (the local judge's URL is filled in
    by the driver before the judge is built).
    """
    raw = list(judge.endpoints) or ([EndpointConfig(base_url=judge.base_url)] if judge.base_url else [])
    if not raw:
        raise ValueError("judge.base_url is not set; with judge.local_server.enabled the driver must "
                         "set it to the started server's URL before building the judge")
    return [e.model_copy(update={
        "model": e.model or judge.model,
        "api_key_env": e.api_key_env or judge.api_key_env,
        "max_concurrency": e.max_concurrency or judge.max_concurrency,
        "requests_per_minute": e.requests_per_minute or judge.requests_per_minute,
        "tokens_per_minute": e.tokens_per_minute or judge.tokens_per_minute,
    }) for e in raw]


def read_api_key(name: str, environ: Mapping[str, str], where: str) -> SecretStr:
    """The key in ``environ[name]``, surrounding whitespace removed; ``MissingApiKeyError``
    (naming ``where`` and the variable, never a value) when it is unset or empty."""
    value = environ.get(name, "")
    if not value.strip():
        raise MissingApiKeyError(f"{where} names {name}, which is not set in the environment "
                                 "(or is empty); export the judge API key in that variable")
    return SecretStr(value.strip())


def resolve_api_keys(judge: JudgeConfig, environ: Mapping[str, str] | None = None) -> dict[str, SecretStr]:
    """The key of every variable the endpoints name (``key_variables``), read from
    ``environ`` (default ``os.environ``); ``MissingApiKeyError`` for one unset or empty."""
    environ = os.environ if environ is None else environ
    return {name: read_api_key(name, environ, _where(judge, name)) for name in key_variables(judge)}


def _where(judge: JudgeConfig, name: str) -> str:
    return "judge.api_key_env" if name == judge.api_key_env else "judge.endpoints[*].api_key_env"


def key_variables(judge: JudgeConfig) -> list[str]:
    """Names of the environment variables holding the endpoints' keys, first one first."""
    names = [e.api_key_env or judge.api_key_env for e in judge.endpoints] or [judge.api_key_env]
    return list(dict.fromkeys(names))


def resolve_endpoints(judge: JudgeConfig, keys: Mapping[str, SecretStr]) -> list[Endpoint]:
    """The judge's endpoints with their keys (``keys`` maps variable names to keys)."""
    endpoints = []
    for i, config in enumerate(endpoint_configs(judge)):
        env = config.api_key_env or judge.api_key_env
        key = keys.get(env)
        if not isinstance(key, SecretStr):
            raise MissingApiKeyError(f"no API key for the variable {env} (judge endpoint {display_url(config.base_url)})")
        limits = Limits(max_concurrency=config.max_concurrency or judge.max_concurrency,
                        requests_per_minute=config.requests_per_minute,
                        tokens_per_minute=config.tokens_per_minute, burst_s=judge.burst_s)
        endpoints.append(Endpoint(i, config.base_url, config.model or judge.model, env, limits, key))
    return endpoints
