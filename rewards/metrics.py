"""Judge metrics: what scoring one sample took (``JudgeTrace``), the judge's
in-flight gauge, and the per-call / per-step aggregation of
``ScoreResult.judge_metrics``.

Per rollout call, the judge pool reports a flat ``dict[str, float]``; per
step, ``aggregate_judge_metrics`` combines the calls' dicts:

* summed: ``judge/retries`` and ``judge/retries/<cause>`` (requests sent
  again after a failure, by the failure's cause, malformed replies included),
  ``judge/failures/<cause>`` (samples left unscored because the weighted
  judge failed, by final cause; ``judge/failures`` itself comes from
  ``ScoreResult.judge_failures``), ``judge/cache_hits`` (verdicts served from
  the cache or shared with an identical request in flight),
  ``judge/rule_gated`` and ``judge/rule_gated/<reason>``; per ensemble member
  (``member_metrics``) ``judge/member/<name>/requests``, ``/failures`` and
  ``/failures/<cause>`` (samples that member gave no score for); per reward term
  (``term_metrics``) ``term/<name>/failures`` (samples it failed on),
  ``term/<name>/seconds`` (seconds spent in it, summed over samples) and
  ``term/<name>/llm_calls`` (HTTP requests it sent to engines); per engine
  (``engine_metrics``) ``engine/<name>/calls``, ``/requests`` (every
  attempt), ``/failures`` (calls that failed), ``/retries`` and ``/cache_hits``;
* mean: ``term/<name>/mean``, the mean of the term's values over the samples
  it scored (carried as hidden ``/_sum`` and ``/_count`` keys, absent when it
  scored none);
* summed, the spending of the call (``spend_metrics``): ``judge/input_tokens``,
  ``judge/output_tokens`` and ``judge/cost_usd`` (US dollars), over every HTTP
  request the judge **and every engine** sent (failed ones whose reply reported
  usage included), and ``judge/usage_estimated`` (replies without ``usage``,
  whose tokens were estimated: ``rewards/client/usage.py``); per engine
  ``engine/<name>/input_tokens``, ``/output_tokens`` and ``/cost_usd``;
* maximum: ``judge/inflight``, the **peak** number of judge HTTP requests in
  flight (whole pool, all endpoints) while the call was being scored, and
  ``engine/<name>/peak_inflight``, the same for one engine;
* histogram: ``judge/_latency_hist/<bucket>`` counts of request latencies
  (seconds from sending a request to its reply or failure, every attempt;
  log-spaced buckets ``LATENCY_BUCKETS_PER_DOUBLING`` per doubling from
  ``LATENCY_BASE_S``) become ``judge/latency_p50_s`` and
  ``judge/latency_p95_s`` (nearest rank, bucket geometric midpoint: within
  about 2 % of the exact value); absent when no request was sent.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "HIST_PREFIX",
    "InflightGauge",
    "JudgeTrace",
    "Spend",
    "aggregate_judge_metrics",
    "engine_metrics",
    "spend_metrics",
    "term_metrics",
    "latency_bucket",
    "latency_histogram",
    "member_metrics",
    "percentile_from_histogram",
]

HIST_PREFIX = "judge/_latency_hist/"
MAX_KEYS = frozenset({"judge/inflight"})
MAX_SUFFIX = "/peak_inflight"
SUM_SUFFIX, COUNT_SUFFIX = "/_sum", "/_count"
LATENCY_BASE_S = 1e-4
LATENCY_BUCKETS_PER_DOUBLING = 16


SPEND_FIELDS = ("input_tokens", "output_tokens", "cost_usd", "usage_estimated")


@dataclass
class Spend:
    """Tokens and US dollars of requests: prompt (``input_tokens``) and completion
    (``output_tokens``) tokens, their ``cost_usd`` at the serving endpoint's prices, and
    ``usage_estimated``, the replies whose tokens were estimated. Invariant: only grows."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    usage_estimated: int = 0

    def add_request(self, input_tokens: int, output_tokens: int, cost_usd: float, estimated: bool) -> None:
        """Count one request's usage."""
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.cost_usd += cost_usd
        self.usage_estimated += int(estimated)

    def add_spend(self, other: Spend) -> None:
        """Count ``other``'s requests too."""
        self.add_request(other.input_tokens, other.output_tokens, other.cost_usd, False)
        self.usage_estimated += other.usage_estimated


@dataclass
class JudgeTrace(Spend):
    """What scoring one sample took. ``requests`` counts HTTP requests sent;
    ``retries`` the requests sent again, by the cause of the failure before;
    ``latencies_s`` one entry per request; ``cache_hit`` and ``gated`` (a
    ``rewards.judge.gate`` reason) mark samples that sent no request; the
    ``Spend`` fields the tokens and dollars of every request with a reply. An
    ensemble's (``rewards/judge/ensemble.py``) sums its members' and adds
    ``member_requests`` (requests by member, every member present) and
    ``member_failures`` ((member, cause) -> 1 for each member that gave no score)."""

    requests: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    cache_hit: bool = False
    gated: str | None = None
    transport_failures: int = 0
    deadline: float | None = None
    member_requests: Counter[str] = field(default_factory=Counter)
    member_failures: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add_requests(self, other: JudgeTrace) -> None:
        """Count ``other``'s requests in this trace too: requests, retries, latencies, transport
        failures and their tokens and dollars (one request's trace into its sample's)."""
        self.requests += other.requests
        self.retries.update(other.retries)
        self.latencies_s.extend(other.latencies_s)
        self.transport_failures += other.transport_failures
        self.add_spend(other)


class _Watch:
    def __init__(self, peak: int) -> None:
        self.peak = peak


class InflightGauge:
    """Requests in flight now, and the peak seen by each open ``watch``."""

    def __init__(self) -> None:
        self.current = 0
        self._watches: list[_Watch] = []

    def inc(self) -> None:
        self.current += 1
        for watch in self._watches:
            watch.peak = max(watch.peak, self.current)

    def dec(self) -> None:
        self.current -= 1

    @contextlib.contextmanager
    def watch(self) -> Iterator[_Watch]:
        """Track the peak of ``current`` while the block runs (starting from now)."""
        watch = _Watch(self.current)
        self._watches.append(watch)
        try:
            yield watch
        finally:
            self._watches.remove(watch)


def latency_bucket(seconds: float) -> int:
    """The histogram bucket of a latency (bucket 0 holds everything below ``LATENCY_BASE_S``)."""
    if seconds <= LATENCY_BASE_S:
        return 0
    return 1 + int(math.floor(math.log2(seconds / LATENCY_BASE_S) * LATENCY_BUCKETS_PER_DOUBLING))


def _bucket_midpoint(bucket: int) -> float:
    if bucket <= 0:
        return LATENCY_BASE_S
    return LATENCY_BASE_S * 2.0 ** ((bucket - 0.5) / LATENCY_BUCKETS_PER_DOUBLING)


def latency_histogram(latencies: Iterable[float]) -> dict[str, float]:
    """``{HIST_PREFIX + bucket: count}`` of ``latencies``."""
    counts = Counter(latency_bucket(s) for s in latencies)
    return {f"{HIST_PREFIX}{b}": float(n) for b, n in counts.items()}


def percentile_from_histogram(counts: Mapping[int, float], q: float) -> float:
    """Nearest-rank ``q``-quantile (0 < q <= 1) of a bucket histogram, as the bucket's midpoint."""
    total = sum(counts.values())
    if total <= 0:
        raise ValueError("empty histogram")
    rank = max(1.0, math.ceil(q * total))
    seen = 0.0
    for bucket in sorted(counts):
        seen += counts[bucket]
        if seen >= rank:
            return _bucket_midpoint(bucket)
    return _bucket_midpoint(max(counts))


def call_metrics(traces: Sequence[JudgeTrace], failure_causes: Iterable[str], peak_inflight: int) -> dict[str, float]:
    """The judge part of one call's ``judge_metrics`` (see the module docstring)."""
    retries: Counter[str] = Counter()
    gated: Counter[str] = Counter()
    for trace in traces:
        retries.update(trace.retries)
        if trace.gated:
            gated[trace.gated] += 1
    metrics: dict[str, float] = {
        "judge/retries": float(sum(retries.values())),
        "judge/cache_hits": float(sum(t.cache_hit for t in traces)),
        "judge/rule_gated": float(sum(gated.values())),
        "judge/inflight": float(peak_inflight),
    }
    metrics.update({f"judge/retries/{c}": float(n) for c, n in retries.items()})
    metrics.update({f"judge/rule_gated/{r}": float(n) for r, n in gated.items()})
    metrics.update({f"judge/failures/{c}": float(n) for c, n in Counter(failure_causes).items()})
    metrics.update(latency_histogram(s for t in traces for s in t.latencies_s))
    metrics.update(member_metrics(traces))
    return metrics


def member_metrics(traces: Sequence[JudgeTrace]) -> dict[str, float]:
    """An ensemble's per-member part of a call's metrics: ``judge/member/<name>/requests``,
    ``judge/member/<name>/failures`` (samples the member gave no score for) and
    ``judge/member/<name>/failures/<cause>``; empty for a single judge."""
    requests: Counter[str] = Counter()
    failures: Counter[tuple[str, str]] = Counter()
    for trace in traces:
        requests.update(trace.member_requests)
        failures.update(trace.member_failures)
    metrics = {f"judge/member/{name}/requests": float(n) for name, n in requests.items()}
    for name in {*requests, *(n for n, _ in failures)}:
        metrics[f"judge/member/{name}/failures"] = float(sum(k for (n, _), k in failures.items() if n == name))
    metrics.update({f"judge/member/{name}/failures/{cause}": float(k) for (name, cause), k in failures.items()})
    return metrics


def term_metrics(name: str, values: Sequence[float | None], seconds: float, llm_calls: int) -> dict[str, float]:
    """One term's part of a call's metrics: ``values`` one per sample (None: failed)."""
    scored = [v for v in values if v is not None]
    metrics = {
        f"term/{name}/failures": float(len(values) - len(scored)),
        f"term/{name}/seconds": float(seconds),
        f"term/{name}/llm_calls": float(llm_calls),
    }
    if scored:
        metrics[f"term/{name}{SUM_SUFFIX}"] = float(sum(scored))
        metrics[f"term/{name}{COUNT_SUFFIX}"] = float(len(scored))
    return metrics


def engine_metrics(name: str, counts: Mapping[str, float], peak_inflight: int) -> dict[str, float]:
    """One engine's part of a call's metrics (``counts``: calls, requests, failures, retries,
    cache_hits, input_tokens, output_tokens, cost_usd)."""
    metrics = {
        f"engine/{name}/{k}": float(counts.get(k, 0))
        for k in ("calls", "requests", "failures", "retries", "cache_hits", *SPEND_FIELDS[:3])
    }
    metrics[f"engine/{name}{MAX_SUFFIX}"] = float(peak_inflight)
    return metrics


def spend_metrics(judge: Iterable[Spend], engines: Iterable[Spend]) -> dict[str, float]:
    """``judge/input_tokens``, ``/output_tokens``, ``/cost_usd`` and ``/usage_estimated`` of a
    call: the judge's requests (``judge``: its samples' traces) plus every engine's."""
    total = Spend()
    for spend in (*judge, *engines):
        total.add_spend(spend)
    return {f"judge/{k}": float(getattr(total, k)) for k in SPEND_FIELDS}


def aggregate_judge_metrics(per_call: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """One step's judge metrics from its calls' ``judge_metrics`` (module docstring)."""
    out: dict[str, float] = {}
    hist: defaultdict[int, float] = defaultdict(float)  # latency bucket -> calls
    for metrics in per_call:
        for key, value in metrics.items():
            if key.startswith(HIST_PREFIX):
                hist[int(key[len(HIST_PREFIX) :])] += value
            elif key in MAX_KEYS or key.endswith(MAX_SUFFIX):
                out[key] = max(out.get(key, value), value)
            else:
                out[key] = out.get(key, 0.0) + value
    if hist:
        out["judge/latency_p50_s"] = percentile_from_histogram(hist, 0.50)
        out["judge/latency_p95_s"] = percentile_from_histogram(hist, 0.95)
    for key in [k for k in out if k.endswith(SUM_SUFFIX)]:
        prefix = key[: -len(SUM_SUFFIX)]
        total, count = out.pop(key), out.pop(prefix + COUNT_SUFFIX, 0.0)
        if count > 0:
            out[prefix + "/mean"] = total / count
    return out
