"""Judge metrics: latency histogram percentiles, per-call and per-step aggregation, the gauge."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from rewards.metrics import (
    HIST_PREFIX,
    InflightGauge,
    JudgeTrace,
    Spend,
    aggregate_judge_metrics,
    call_metrics,
    engine_metrics,
    latency_histogram,
    percentile_from_histogram,
    spend_metrics,
)


def exact_percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def hist_of(values: list[float]) -> Counter[int]:
    return Counter({int(k[len(HIST_PREFIX) :]): v for k, v in latency_histogram(values).items()})


@pytest.mark.parametrize("seed", range(5))
def test_histogram_percentiles_are_within_three_percent(seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.lognormvariate(math.log(0.2), 0.8) for _ in range(rng.randint(5, 500))]
    for q in (0.5, 0.95):
        assert percentile_from_histogram(hist_of(values), q) == pytest.approx(exact_percentile(values, q), rel=0.03)


def test_step_percentiles_combine_the_calls_histograms() -> None:
    a, b = [0.1] * 90, [2.0] * 10  # one call fast, one slow
    step = aggregate_judge_metrics([latency_histogram(a), latency_histogram(b)])
    assert step["judge/latency_p50_s"] == pytest.approx(0.1, rel=0.03)
    assert step["judge/latency_p95_s"] == pytest.approx(2.0, rel=0.03)
    assert not any(k.startswith(HIST_PREFIX) for k in step)


def test_call_metrics_and_their_aggregation() -> None:
    t1 = JudgeTrace(requests=3, latencies_s=[0.1, 0.2, 0.3])
    t1.retries.update({"judge_http_429": 2})
    t2 = JudgeTrace(cache_hit=True)
    t3 = JudgeTrace(gated="empty")
    t4 = JudgeTrace(requests=1, latencies_s=[5.0])
    t4.retries.update({"judge_malformed": 1})
    call1 = call_metrics([t1, t2, t3], ["judge_http_503"], peak_inflight=7)
    call2 = call_metrics([t4], ["judge_http_503", "judge_timeout"], peak_inflight=3)
    assert call1["judge/retries"] == 2 and call1["judge/retries/judge_http_429"] == 2
    assert call1["judge/cache_hits"] == 1 and call1["judge/rule_gated"] == 1 and call1["judge/rule_gated/empty"] == 1
    step = aggregate_judge_metrics([call1, call2, {}])
    assert step["judge/retries"] == 3 and step["judge/retries/judge_malformed"] == 1
    assert step["judge/failures/judge_http_503"] == 2 and step["judge/failures/judge_timeout"] == 1
    assert step["judge/inflight"] == 7  # the peak, not a sum
    assert step["judge/latency_p95_s"] == pytest.approx(5.0, rel=0.03)


def test_spending_sums_the_judge_and_every_engine_per_call_and_per_step() -> None:
    judge_a = JudgeTrace(requests=1)
    judge_a.add_request(1000, 200, 0.25, estimated=False)
    judge_b = JudgeTrace(requests=2)
    judge_b.add_request(300, 50, 0.5, estimated=True)
    judge_b.add_request(300, 40, 0.5, estimated=False)
    engine = Spend(input_tokens=10, output_tokens=5, cost_usd=0.125, usage_estimated=1)
    call1 = spend_metrics([judge_a, judge_b], [engine])
    # tokens 1000 + 300 + 300 + 10 in, 200 + 50 + 40 + 5 out; $0.25 + 0.5 + 0.5 + 0.125; 2 estimated
    assert call1 == {
        "judge/input_tokens": 1610.0,
        "judge/output_tokens": 295.0,
        "judge/cost_usd": 1.375,
        "judge/usage_estimated": 2.0,
    }
    call2 = spend_metrics([], [Spend(1, 2, 0.5, 0)])
    with_engine = {**call1, **engine_metrics("geo", vars(engine), 1)}
    assert with_engine["engine/geo/cost_usd"] == 0.125 and with_engine["engine/geo/input_tokens"] == 10
    step = aggregate_judge_metrics([with_engine, call2])
    assert step["judge/cost_usd"] == 1.875 and step["judge/input_tokens"] == 1611.0  # summed over calls
    assert step["judge/usage_estimated"] == 2.0 and step["engine/geo/cost_usd"] == 0.125


def test_no_requests_no_latency_keys() -> None:
    step = aggregate_judge_metrics([call_metrics([JudgeTrace(gated="empty")], [], 0)])
    assert "judge/latency_p50_s" not in step and step["judge/rule_gated"] == 1
    assert aggregate_judge_metrics([]) == {}


def test_gauge_watch_sees_the_peak_during_its_block_only() -> None:
    gauge = InflightGauge()
    gauge.inc()
    with gauge.watch() as outer:
        gauge.inc()
        gauge.inc()
        gauge.dec()
        with gauge.watch() as inner:
            gauge.dec()
        gauge.dec()
    gauge.inc()
    gauge.inc()
    assert (outer.peak, inner.peak, gauge.current) == (3, 2, 2)
