"""The evaluation job's outputs: per-item records in; results.json, report.md and plots out.

``python -m ray_jobs.evaluate`` scores every held-out item under every
condition and keeps one :class:`ItemResult` per (condition, item) in
items.jsonl (:func:`to_json` / :func:`from_json`). :func:`build_results` turns
them into the content of results.json; :func:`write_report` writes it with
report.md and the PNGs. An unscored item is never scored 0: it is listed under
``missing`` and left out of the means and of every paired comparison that
involves its condition. Nothing here touches models or Ray.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from itertools import combinations
from pathlib import Path
from typing import Any

from algorithms.statistics import paired_bootstrap, pareto_front, refusal_rates, summarize

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
    return {"n": s.n, "mean": s.mean, "sd": s.sd, "ci_low": s.ci_low, "ci_high": s.ci_high}


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
            out["strata"][name] = {k: part[k] for k in ("n", "mean", "ci_low", "ci_high")}
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


# --- formatting -------------------------------------------------------------------------------------------


def _f(x: float | None, signed: bool = False) -> str:
    return "—" if x is None else (f"{x:+.3f}" if signed else f"{x:.3f}")


def _ci(lo: float | None, hi: float | None, signed: bool = False) -> str:
    return "—" if lo is None or hi is None else f"[{_f(lo, signed)}, {_f(hi, signed)}]"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def _level(confidence: float) -> tuple[str, str]:
    """('95 %', '5 %') for confidence 0.95."""
    return f"{100 * confidence:g} %", f"{round(100 * (1 - confidence), 6):g} %"


def comparison_sentence(c: dict[str, Any], confidence: float) -> str:
    """One plain sentence: the comparison's Δ, interval, p and whether it is significant."""
    conf, alpha = _level(confidence)
    name = f"{c['b']} vs {c['a']}"
    if c["n"] == 0:
        return f"{name}: no item is scored under both: no comparison."
    head = (
        f"{name}: Δ = {_f(c['mean_delta'], True)}, {conf} CI {_ci(c['ci_low'], c['ci_high'], True)}, "
        f"one-sided p = {_f(c['p_one_sided'])} (n = {c['n']})"
    )
    if c["n"] < 2:
        return f"{head}: one paired item is too few to judge significance."
    if c["significant"]:
        direction = "higher" if c["mean_delta"] > 0 else "lower"
        return f"{head}: significant at the {alpha} level ({c['b']} scores {direction})."
    return f"{head}: the CI includes 0: no significant difference at the {alpha} level (an honest null result)."


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _comparison_rows(comparisons: list[dict[str, Any]], stratum: bool = False) -> list[list[str]]:
    return [
        ([c["stratum"]] if stratum else [])
        + [
            f"{c['b']} vs {c['a']}",
            str(c["n"]),
            _f(c["mean_delta"], True),
            _ci(c["ci_low"], c["ci_high"], True),
            _f(c["p_one_sided"]),
            f"{c['wins']}/{c['losses']}/{c['ties']}",
            "yes" if c["significant"] else "no",
        ]
        for c in comparisons
    ]


def _markdown(results: dict[str, Any], title: str, strata: list[str]) -> str:
    """report.md's text."""
    conf, _ = _level(results["confidence"])
    per, comps = results["conditions"], results["comparisons"]
    cmp_header = ["comparison", "n", "Δ", f"{conf} CI", "one-sided p", "W/L/T", "significant"]
    base = f"baseline `{results['baseline']}`" if results["baseline"] else "every pair compared"
    lines = [
        f"# {title}",
        "",
        (
            f"{len(per)} conditions on {results['items']} held-out items ({base}); paired bootstrap of the mean "
            f"difference, percentile method, B = {results['resamples']}, seed {results['seed']}; {conf} intervals."
        ),
        "",
        "## Conditions",
        "",
    ]
    lines += _table(
        ["condition", "n", "missing", "mean", f"{conf} CI", "block rate", "false-block rate"],
        [
            [
                c,
                str(e["n"]),
                str(e["n_missing"]),
                _f(e["mean"]),
                _ci(e["ci_low"], e["ci_high"]),
                _pct(e["block_rate"]),
                _pct(e["false_block_rate"]),
            ]
            for c, e in per.items()
        ],
    )
    lines += ["", "![Condition means](condition_means.png)", "", "## Comparisons", ""]
    lines += _table(cmp_header, _comparison_rows(comps))
    lines += [
        "",
        (
            f"Δ = b − a per item, over the items scored under both; significant: the two-sided {conf} CI "
            "excludes 0 (for a lift, roughly one-sided p below half the level)."
        ),
        "",
    ]
    lines += [comparison_sentence(c, results["confidence"]) + "\n" for c in comps] or ["No comparison.\n"]
    if strata:
        lines += ["## By stratum", ""]
        lines += _table(
            ["stratum"] + list(per),
            [
                [s]
                + [
                    f"{_f(e['strata'][s]['mean'])} {_ci(e['strata'][s]['ci_low'], e['strata'][s]['ci_high'])} "
                    f"(n = {e['strata'][s]['n']})"
                    for e in per.values()
                ]
                for s in strata
            ],
        )
        lines += [""] + _table(["stratum"] + cmp_header, _comparison_rows(results["strata_comparisons"], True))
        lines += ["", "![Condition means by stratum](condition_means_by_stratum.png)", ""]
    lines += ["## Cost", ""]
    lines += _table(
        [
            "condition",
            "forward passes / item",
            "generated tokens / item",
            "judge calls / item",
            "seconds / item",
            f"cost ratio (vs {results['reference']})",
            "quality lift",
            "Pareto front",
        ],
        [
            [
                c,
                _f(e["forward_passes_per_item"]),
                _f(e["generated_tokens_per_item"]),
                _f(e["judge_calls_per_item"]),
                _f(e["seconds_per_item"]),
                _f(e["cost_ratio"]),
                _f(e["quality_lift"], True),
                "yes" if e["pareto"] else "no",
            ]
            for c, e in per.items()
        ],
    )
    dominated = [c for c, e in per.items() if not e["pareto"]]
    lines += [
        "",
        (
            "Dominated (another condition needs no more forward passes per item and scores at least as "
            f"high on average, one of them strictly): {', '.join(dominated)}."
            if dominated
            else "No condition is dominated on forward passes per item and mean score."
        ),
        "",
        "![Cost and quality](cost_quality.png)",
        "",
        "## Missing items",
        "",
    ]
    missing = results["missing"]
    lines.append(
        f"{len(missing)} item(s) unscored in at least one condition; each is left out of that condition's "
        "mean and of the comparisons involving it (never scored 0)."
    )
    lines += [""] + [
        f"- `{m['item_id']}`: " + ", ".join(f"{c} ({m['errors'][c]})" for c in m["conditions"]) for m in missing[:50]
    ]
    if len(missing) > 50:
        lines.append(f"- … and {len(missing) - 50} more (results.json lists them all)")
    return "\n".join(lines).rstrip() + "\n"


# --- writing ----------------------------------------------------------------------------------------------


def _atomic(path: Path, write: Callable[[Path], object]) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
    return path


def _errorbars(ax: Any, xs: list[float], entries: list[dict[str, Any]], **kwargs: Any) -> None:
    """Means with their CI as error bars; entries without a mean are skipped, without a CI get none."""
    pts = [(x, e) for x, e in zip(xs, entries) if e["mean"] is not None]
    if not pts:
        return
    lo = [e["mean"] - e["ci_low"] if e["ci_low"] is not None else 0.0 for _, e in pts]
    hi = [e["ci_high"] - e["mean"] if e["ci_high"] is not None else 0.0 for _, e in pts]
    ax.errorbar([x for x, _ in pts], [e["mean"] for _, e in pts], yerr=[lo, hi], fmt="o", capsize=4, **kwargs)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    _atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return path


def _plots(directory: Path, results: dict[str, Any], title: str, strata: list[str]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = results["conditions"]
    names, conf = list(per), _level(results["confidence"])[0]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(names)), 3.6))
    _errorbars(ax, list(range(len(names))), list(per.values()))
    ax.set_xticks(range(len(names)), names)
    ax.set(xlim=(-0.5, len(names) - 0.5), ylabel=f"mean score ({conf} CI)", title=title)
    paths = [_save(fig, directory / "condition_means.png")]
    if strata:
        fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(strata) * max(1, len(names)) ** 0.5), 3.8))
        width = 0.8 / len(names)
        for k, (c, e) in enumerate(per.items()):
            xs = [s + (k - (len(names) - 1) / 2) * width for s in range(len(strata))]
            _errorbars(ax, xs, [e["strata"][s] for s in strata], label=c)
        ax.set_xticks(range(len(strata)), strata)
        ax.set(ylabel=f"mean score ({conf} CI)", title=f"{title}: by stratum")
        ax.legend(fontsize="small")
        paths.append(_save(fig, directory / "condition_means_by_stratum.png"))
    fig, ax = plt.subplots(figsize=(5.0, 3.8))
    pts = {
        c: (e["forward_passes_per_item"], e["mean"])
        for c, e in per.items()
        if e["forward_passes_per_item"] is not None and e["mean"] is not None
    }
    front = sorted(v for c, v in pts.items() if per[c]["pareto"])
    if front:  # the staircase runs on to the costliest point, so that a front of one point shows too
        right = max(x for x, _ in pts.values())
        front += [(right, front[-1][1])] if right > front[-1][0] else []
        ax.step(
            [x for x, _ in front],
            [y for _, y in front],
            where="post",
            linestyle="--",
            color="gray",
            label="Pareto front",
        )
        ax.legend(fontsize="small")
    for c, (x, y) in pts.items():
        ax.scatter([x], [y], color="C0" if per[c]["pareto"] else "C3")
        ax.annotate(c, (x, y), textcoords="offset points", xytext=(5, 5), fontsize="small")
    ax.set(xlabel="forward passes per item", ylabel="mean score", title=f"{title}: cost and quality")
    paths.append(_save(fig, directory / "cost_quality.png"))
    return paths


def write_report(directory: Path, results: dict[str, Any], title: str) -> list[Path]:
    """Write results.json (atomically), report.md and the PNGs into ``directory``; the paths written.

    ``results`` is :func:`build_results`' dict, or the same read back from results.json.
    """
    directory.mkdir(parents=True, exist_ok=True)
    first: dict[str, Any] = next(iter(results["conditions"].values()), {})
    strata = list(first.get("strata", {}))
    text = json.dumps(results, indent=2, allow_nan=False) + "\n"
    paths = [_atomic(directory / "results.json", lambda tmp: tmp.write_text(text))]
    md = _markdown(results, title, strata)
    paths.append(_atomic(directory / "report.md", lambda tmp: tmp.write_text(md)))
    return paths + _plots(directory, results, title, strata)
