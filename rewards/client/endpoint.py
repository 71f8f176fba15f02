"""One endpoint of the judge or of a reward engine, as requests are sent to it: URL, model, key
(a ``SecretStr``, never in ``repr``), limits and prices; and ``display_url``, the key-free form of a URL
that logs and messages use. ``rewards/judge/endpoints.py`` resolves endpoints from the configs."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from rewards.client.limits import Limits
from rewards.client.usage import Prices

__all__ = ["Endpoint", "display_url"]


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
    """One endpoint serving the judge or an engine. ``key`` identifies it (limiter and breaker);
    ``index`` is its position in the config (ties in balancing go to the lowest); ``prices``
    what its tokens cost (free unless configured)."""

    index: int
    base_url: str
    model: str
    api_key_env: str
    limits: Limits
    api_key: SecretStr = field(repr=False, compare=False)
    prices: Prices = field(default_factory=Prices)

    @property
    def key(self) -> str:
        return f"{self.index}|{self.base_url}|{self.model}"

    @property
    def display(self) -> str:
        """A key-free name for logs: ``<url> (<model>)``."""
        return f"{display_url(self.base_url)} ({self.model})"
