"""The evaluation job's outputs: per-item records in; results.json, report.md and plots out.

``python -m ray_jobs.evaluate`` scores every held-out item under every
condition and keeps one :class:`ItemResult` per (condition, item) in
items.jsonl (:func:`to_json` / :func:`from_json`). :func:`build_results` turns
them into the content of results.json; :func:`write_report` writes it with
report.md and the PNGs (``ray_jobs/evaluation/render.py``, whose two public names are
re-exported here). An unscored item is never scored 0: it is listed under
``missing`` and left out of the means and of every paired comparison that
involves its condition. Nothing here touches models or Ray.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from itertools import combinations
from typing import Any

from algorithms.statistics import paired_bootstrap, pareto_front, refusal_rates, summarize
from ray_jobs.evaluation.render import comparison_sentence, write_report

__all__ = [
    "COSTS",
    "NO_STRATUM",
    "ItemResult",
    "build_results",
    "comparison_sentence",
    "from_json",
    "to_json",
    "write_report",
]

NO_STRATUM = "(none)"  # the stratum of an item without one, when other items have one
COSTS = ("forward_passes", "generated_tokens", "judge_calls", "seconds")


@dataclass(frozen=True)
class ItemResult:
    """One held-out item under one condition. Invariant: exactly one of score and error is None."""

    condition: str
    item_id: str
    prompt: str
    stratum: str | None  # the row's stratum field, when the data has one
    label: bool | None  # the row's refusal label (seed 000: "inappropriate"), None when absent
    candidates: list[str]  # the k completions generated
    selected: int | None  # index of the completion that was scored (None if generation failed)
    score: float | None  # the judge's score of the selected completion; None when unscored
    error: str | None  # why unscored
    blocked: float | None  # the judge's request-check flag for the selected completion (1.0 blocked), None if unknown
    forward_passes: float  # generation passes + critic passes for this item (best-of-4 with a critic: 4 + 1 = 5.0)
    generated_tokens: int
    judge_calls: int  # judge requests made for this item (ranking by the judge makes k)
    seconds: float  # wall time attributed to this item

    def __post_init__(self) -> None:
        if (self.score is None) == (self.error is None):
            raise ValueError(f"item {self.item_id!r} ({self.condition}): exactly one of score and error must be set")
        if self.score is not None and not math.isfinite(self.score):
            raise ValueError(f"item {self.item_id!r} ({self.condition}): score {self.score} is not finite")


_FIELDS = tuple(f.name for f in fields(ItemResult))


def to_json(item: ItemResult) -> dict[str, Any]:
    """One items.jsonl line's object (every field, by name)."""
    return asdict(item)


def from_json(row: dict[str, Any]) -> ItemResult:
    """The inverse of :func:`to_json`; ValueError on a missing or unknown key."""
    missing, unknown = set(_FIELDS) - row.keys(), row.keys() - set(_FIELDS)
    if missing or unknown:
        raise ValueError(f"not an item result: missing {sorted(missing)}, unknown {sorted(unknown)}")
    return ItemResult(**{**{k: row[k] for k in _FIELDS}, "candidates": list(row["candidates"])})


def _index(items: Sequence[ItemResult], conditions: list[str]) -> dict[str, dict[str, ItemResult]]:
    """condition -> item id -> its record; ValueError on an unknown condition or a duplicate."""
    if not conditions or len(set(conditions)) != len(conditions):
        raise ValueError(f"conditions must be non-empty and distinct, got {conditions}")
    table: dict[str, dict[str, ItemResult]] = {c: {} for c in conditions}
    for item in items:
        if item.condition not in table:
            raise ValueError(f"item {item.item_id!r} has condition {item.condition!r}, not one of {conditions}")
        if item.item_id in table[item.condition]:
            raise ValueError(f"item {item.item_id!r} appears twice under condition {item.condition!r}")
        table[item.condition][item.item_id] = item
    return table


def _score(records: dict[str, ItemResult], item_id: str) -> float | None:
    item = records.get(item_id)
    return None if item is None else item.score


def _summary(scores: list[float], confidence: float) -> dict[str, Any]:
    s = summarize(scores, confidence)
    return {"n": s.n, "mean": s.mean, "sd": s.sd, "ci_low": s.ci_low, "ci_high": s.ci_high, "interval": s.interval}


def _condition(
    records: dict[str, ItemResult], ids: list[str], strata: dict[str, str] | None, confidence: float
) -> dict[str, Any]:
    """One condition's entry; ``n + n_missing`` is the number of distinct items (a missing
    record counts as missing), costs are means over the condition's records."""
    recs = list(records.values())
    scores = [s for i in ids if (s := _score(records, i)) is not None]
    out = _summary(scores, confidence)
    out["n_missing"] = len(ids) - out["n"]
    for cost in COSTS:
        out[f"{cost}_per_item"] = sum(getattr(r, cost) for r in recs) / len(recs) if recs else None
    rates = refusal_rates([r.label for r in recs], [r.blocked for r in recs])
    out["block_rate"], out["false_block_rate"] = rates.block_rate, rates.false_block_rate
    if strata is not None:
        out["strata"] = {}
        for name in sorted(set(strata.values())):
            part = _summary([s for i in ids if strata[i] == name and (s := _score(records, i)) is not None], confidence)
            out["strata"][name] = {k: part[k] for k in ("n", "mean", "ci_low", "ci_high", "interval")}
    return out


def _relative(per: dict[str, dict[str, Any]], reference: str) -> None:
    """Add cost_ratio, quality_lift (vs ``reference``) and pareto to every condition's entry."""
    ref_cost, ref_mean = per[reference]["forward_passes_per_item"], per[reference]["mean"]
    points = {
        c: (e["forward_passes_per_item"], e["mean"])
        for c, e in per.items()
        if e["forward_passes_per_item"] is not None and e["mean"] is not None
    }
    front = set(pareto_front(points))
    for c, e in per.items():
        cost, mean = e["forward_passes_per_item"], e["mean"]
        e["cost_ratio"] = cost / ref_cost if cost is not None and ref_cost else None
        e["quality_lift"] = mean - ref_mean if mean is not None and ref_mean is not None else None
        e["pareto"] = c in front


def _compare(
    table: dict[str, dict[str, ItemResult]],
    a: str,
    b: str,
    ids: list[str],
    resamples: int,
    seed: int,
    confidence: float,
) -> dict[str, Any]:
    """Paired comparison of b against a over the items scored under both. ``significant``:
    the CI excludes 0 and at least two items were paired."""
    pairs = [(_score(table[a], i), _score(table[b], i)) for i in ids]
    both = [(x, y) for x, y in pairs if x is not None and y is not None]
    row: dict[str, Any] = {"a": a, "b": b}
    if not both:
        row.update(
            n=0,
            mean_delta=None,
            ci_low=None,
            ci_high=None,
            p_one_sided=None,
            wins=0,
            losses=0,
            ties=0,
            resamples=resamples,
            seed=seed,
            significant=False,
        )
        return row
    cmp = paired_bootstrap(
        [x for x, _ in both],
        [y for _, y in both],
        resamples=resamples,
        seed=seed,
        confidence=confidence,
    )
    row.update(asdict(cmp), significant=cmp.n >= 2 and (cmp.ci_low > 0 or cmp.ci_high < 0))
    return row


def build_results(
    items: Sequence[ItemResult],
    conditions: list[str],
    baseline: str | None,
    resamples: int,
    seed: int,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """The content of results.json (see the module docstring; JSON-ready, None for what cannot be computed).

    Comparisons are ``baseline`` against each other condition, or every pair in
    config order (a = the earlier one) when ``baseline`` is None; each uses the
    items scored under both, in item-id order, and the same bootstrap ``seed``.
    ``cost_ratio`` and ``quality_lift`` (an unpaired difference of means) are
    relative to ``reference``: the baseline, else the first condition.
    """
    table = _index(items, conditions)
    if baseline is not None and baseline not in table:
        raise ValueError(f"baseline {baseline!r} is not one of the conditions {conditions}")
    ids = sorted({item.item_id for item in items})
    strata: dict[str, str] | None = None
    if any(item.stratum is not None for item in items):
        strata = {}
        for item in items:
            if strata.get(item.item_id) in (None, NO_STRATUM):
                strata[item.item_id] = item.stratum if item.stratum is not None else NO_STRATUM
    reference = baseline if baseline is not None else conditions[0]
    per = {c: _condition(table[c], ids, strata, confidence) for c in conditions}
    _relative(per, reference)
    pairs = (
        [(baseline, c) for c in conditions if c != baseline]
        if baseline is not None
        else list(combinations(conditions, 2))
    )
    missing = []
    for i in ids:
        unscored = [c for c in conditions if _score(table[c], i) is None]
        if unscored:
            missing.append(
                {
                    "item_id": i,
                    "conditions": unscored,
                    "errors": {c: table[c][i].error if i in table[c] else "no record" for c in unscored},
                }
            )
    results: dict[str, Any] = {
        "baseline": baseline,
        "reference": reference,
        "resamples": resamples,
        "seed": seed,
        "confidence": confidence,
        "items": len(ids),
        "conditions": per,
        "comparisons": [_compare(table, a, b, ids, resamples, seed, confidence) for a, b in pairs],
        "missing": missing,
    }
    if strata is not None:
        results["strata_comparisons"] = [
            {
                "stratum": name,
                **_compare(table, a, b, [i for i in ids if strata[i] == name], resamples, seed, confidence),
            }
            for name in sorted(set(strata.values()))
            for a, b in pairs
        ]
    return results
