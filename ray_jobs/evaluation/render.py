"""The evaluation report's files, from the dict ``build_results`` makes (or results.json read back).

:func:`write_report` writes results.json (atomically), report.md and the PNGs
(matplotlib, Agg backend); :func:`comparison_sentence` is the one-line verdict
of a paired comparison that report.md and the evaluation job's console print.
Nothing here computes a statistic: every number comes from the results dict
(``ray_jobs/evaluation/report.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
            f"difference, percentile method, B = {results['resamples']}, seed {results['seed']}; {conf} intervals "
            "(of a mean score: Student-t; of a pass rate, every score 0 or 1: Wilson's score interval)."
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
