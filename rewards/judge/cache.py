"""Reply caches: in memory (LRU, bounded) and optionally on disk (SQLite), and
the sharing of identical calls in flight (``SharedCalls``).

``ReplyCache`` stores values through a codec (to and from text, for the disk);
``VerdictCache`` holds judge verdicts, ``TextCache`` engine replies
(``rewards/llm.py``). Verdicts are keyed by ``verdict_key(judge models, rubric
version, prompt version, request, candidate)``, engine replies by
``reply_key(models, messages, parameters)``: SHA-256s over those fields, so a
change of model, rubric, prompt format or parameters never reuses an old
value. Only *valid* values are stored; failures are never cached. The disk
cache (``judge.cache_path``)
lets evaluation reruns reuse verdicts; it is one table
``verdicts(key TEXT PRIMARY KEY, verdict TEXT, created REAL)`` in WAL mode,
safe to share between processes. Disk access runs in a worker thread, off
the event loop. A row that does not decode is treated as a miss; a disk
error (unwritable path, locked or corrupt file) is logged once and turns the
disk cache off for the rest of the run: a cache never fails a sample.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Generic, TypeVar

from rewards.judge.rubric import Verdict

__all__ = [
    "GroupVerdictCache",
    "ReplyCache",
    "SharedCalls",
    "TextCache",
    "VerdictCache",
    "reply_key",
    "group_verdict_key",
    "verdict_from_json",
    "verdict_key",
    "verdict_to_json",
]

logger = logging.getLogger(__name__)

_CACHE_FORMAT = "relay-verdict-cache-v1"
_REPLY_FORMAT = "relay-reply-cache-v1"
_GROUP_FORMAT = "relay-group-cache-v1"
V = TypeVar("V")


def reply_key(models: Sequence[str], messages: Sequence[Mapping[str, object]], params: Mapping[str, object]) -> str:
    """The cache key of one engine call: its models, messages and request parameters."""
    payload = json.dumps(
        [_REPLY_FORMAT, sorted(set(models)), list(messages), dict(params)],
        ensure_ascii=False,
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


def verdict_key(models: Sequence[str], rubric_version: str, prompt_version: str, request: str, candidate: str) -> str:
    """The cache key of one (judge, rubric, prompt format, request, candidate)."""
    payload = json.dumps(
        [_CACHE_FORMAT, sorted(set(models)), rubric_version, prompt_version, request, candidate], ensure_ascii=False
    )
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


def group_verdict_key(
    models: Sequence[str], rubric_version: str, prompt_version: str, request: str, candidates: Sequence[str]
) -> str:
    """The cache key of one group request (``rewards/judge/group.py``): the candidates in the shown order."""
    payload = json.dumps(
        [_GROUP_FORMAT, sorted(set(models)), rubric_version, prompt_version, request, list(candidates)],
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


def verdict_to_json(verdict: Verdict) -> str:
    return json.dumps(
        {
            "criteria": verdict.criteria,
            "inappropriate": verdict.inappropriate,
            "blocked": verdict.blocked,
            "reasons": verdict.reasons,
        }
    )


def verdict_from_json(text: str) -> Verdict | None:
    """The verdict stored as ``text``, or None if it does not decode."""
    try:
        raw = json.loads(text)
        criteria = {str(k): float(v) for k, v in raw["criteria"].items()}
        flags = [raw.get(k) for k in ("inappropriate", "blocked")]
        if any(f is not None and not isinstance(f, bool) for f in flags):
            return None
        reasons = {str(k): str(v) for k, v in (raw.get("reasons") or {}).items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return Verdict(criteria, flags[0], flags[1], reasons)


class ReplyCache(Generic[V]):
    """LRU of at most ``max_entries`` values, backed by an optional SQLite file
    (values go to disk as ``encode(value)`` and come back as ``decode(text)``,
    None for text that does not decode).

    Invariants: ``len(memory) <= max_entries``; ``get`` returns only what
    ``put`` stored (here or, through the file, in an earlier run).
    """

    def __init__(
        self, max_entries: int, path: str | Path | None, encode: Callable[[V], str], decode: Callable[[str], V | None]
    ) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        self.path = Path(path) if path else None
        self._encode, self._decode = encode, decode
        self._memory: OrderedDict[str, V] = OrderedDict()
        self._db: sqlite3.Connection | None = None
        self._db_lock = threading.Lock()
        self._disk_failed = False
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_entries={self.max_entries}, path={str(self.path) if self.path else None!r})"

    def __len__(self) -> int:
        return len(self._memory)

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 or self.path is not None

    async def get(self, key: str) -> V | None:
        """The cached value of ``key`` (memory first, then disk), or None."""
        verdict = self._memory.get(key)
        if verdict is not None:
            self._memory.move_to_end(key)
        elif self._disk_on():
            verdict = await asyncio.to_thread(self._guarded, self._db_get, key)
            if verdict is not None:
                self._remember(key, verdict)
        if verdict is None:
            self.misses += 1
        else:
            self.hits += 1
        return verdict

    async def put(self, key: str, verdict: V) -> None:
        """Store a valid value (never call this for a failure)."""
        self._remember(key, verdict)
        if self._disk_on():
            await asyncio.to_thread(self._guarded, self._db_put, key, self._encode(verdict))

    def _disk_on(self) -> bool:
        return self.path is not None and not self._disk_failed

    def _guarded(self, fn, *args):  # runs in a worker thread
        try:
            return fn(*args)
        except (sqlite3.Error, OSError) as err:
            if not self._disk_failed:
                self._disk_failed = True
                logger.warning("verdict cache %s: disk cache off after %s", self.path, type(err).__name__)
            return None

    def _remember(self, key: str, verdict: V) -> None:
        if self.max_entries == 0:
            return
        self._memory[key] = verdict
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_entries:
            self._memory.popitem(last=False)

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            assert self.path is not None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, verdict TEXT NOT NULL, "
                "created REAL NOT NULL)"
            )
            db.commit()
            self._db = db
        return self._db

    def _db_get(self, key: str) -> V | None:
        with self._db_lock:
            row = self._connect().execute("SELECT verdict FROM verdicts WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        verdict = self._decode(row[0])
        if verdict is None:
            logger.warning("verdict cache %s: ignoring an undecodable row", self.path)
        return verdict

    def _db_put(self, key: str, text: str) -> None:
        with self._db_lock:
            db = self._connect()
            db.execute(
                "INSERT OR REPLACE INTO verdicts (key, verdict, created) VALUES (?, ?, ?)", (key, text, time.time())
            )
            db.commit()

    def close(self) -> None:
        """Close the SQLite connection (the memory cache stays)."""
        with self._db_lock:
            db, self._db = self._db, None
        if db is not None:
            db.close()


class VerdictCache(ReplyCache[Verdict]):
    """The judge's verdicts (``judge.cache_size``, ``judge.cache_path``)."""

    def __init__(self, max_entries: int, path: str | Path | None = None) -> None:
        super().__init__(max_entries, path, verdict_to_json, verdict_from_json)


def _group_from_json(text: str) -> tuple[Verdict, ...] | None:
    try:
        items = json.loads(text)
    except ValueError:
        return None
    verdicts = [verdict_from_json(t) if isinstance(t, str) else None for t in items] if isinstance(items, list) else []
    return tuple(v for v in verdicts if v is not None) if verdicts and None not in verdicts else None


class GroupVerdictCache(ReplyCache[tuple[Verdict, ...]]):
    """Complete answers of group requests, one verdict per shown candidate (``judge.cache_size``,
    ``judge.cache_path``; keys from ``group_verdict_key`` never equal a ``verdict_key``)."""

    def __init__(self, max_entries: int, path: str | Path | None = None) -> None:
        super().__init__(max_entries, path, lambda vs: json.dumps([verdict_to_json(v) for v in vs]), _group_from_json)


def _text(value: str) -> str | None:
    return value if isinstance(value, str) else None


class TextCache(ReplyCache[str]):
    """Engine replies as text (``reward.engines.<name>.cache_size``)."""

    def __init__(self, max_entries: int, path: str | Path | None = None) -> None:
        super().__init__(max_entries, path, str, _text)


class SharedCalls(Generic[V]):
    """A cache in front of a computation, where identical calls in flight share one outcome.

    ``run(key, compute)``: the cached value of ``key``; else the outcome of an
    identical call already in flight; else ``compute()``, whose value is
    cached. A failure is never cached nor shared: the callers waiting on a
    failed call compute on their own. Bound to the event loop it runs on (a
    new loop starts with no calls in flight).
    """

    def __init__(self, cache: ReplyCache[V]) -> None:
        self.cache = cache
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[str, asyncio.Future] = {}

    def __repr__(self) -> str:
        return f"SharedCalls({self.cache!r}, in_flight={len(self._pending)})"

    def _pending_map(self) -> dict[str, asyncio.Future]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._pending = loop, {}
        return self._pending

    async def run(self, key: str, compute: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """``(value, hit)``: ``hit`` is True when the value was cached or shared."""
        cached = await self.cache.get(key)
        pending = self._pending_map()
        if cached is None and key in pending:
            cached = await asyncio.shield(pending[key])  # None when that call failed
        if cached is not None:
            return cached, True
        if key in pending:  # an identical call failed: try on our own
            return await compute(), False
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        pending[key] = future
        value: V | None = None
        try:
            value = await compute()
            await self.cache.put(key, value)
            return value, False
        finally:
            pending.pop(key, None)
            future.set_result(value)
