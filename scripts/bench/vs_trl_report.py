"""The pure parts of ``scripts/bench/vs_trl.py``: step times from logs, the mean over a
window of steps, and the tables. Steps are numbered from 1 here (relay's
``metrics.jsonl`` counts from 0; its console line says ``step  N/M`` from 1)."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

STAGE_KEYS = (
    "time/step_s",
    "time/generate_s",
    "time/judge_s",
    "time/train_s",
    "time/forward_ahead_s",
    "time/weight_sync_s",
    "judge/latency_p50_s",
    "judge/latency_p95_s",
    "judge/inflight",
    "judge/requests",
    "judge/retries",
    "judge/failures",
)
_CONSOLE_RE = re.compile(r"^step\s+(\d+)/(\d+) \|")


@dataclass(frozen=True)
class Stats:
    """Seconds per step over a window of steps: mean, sample sd (0 for one step), min, max, steps."""

    mean: float
    sd: float
    min: float
    max: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} s/step (sd {self.sd:.3f}, {self.min:.3f}-{self.max:.3f}, {self.n} steps)"


def durations_from_ends(ends: Sequence[float], start: float | None = None) -> dict[int, float]:
    """Step s (1-based) took ``ends[s-1] - ends[s-2]``: the time between consecutive steps'
    completions; step 1 took ``ends[0] - start`` when ``start`` is given, else it is left out."""
    out = {s + 1: ends[s] - ends[s - 1] for s in range(1, len(ends))}
    if start is not None and ends:
        out[1] = ends[0] - start
    return dict(sorted(out.items()))


def console_step(line: str) -> int | None:
    """The 1-based step of relay's console line (``step    3/12 | reward ...``), else None."""
    match = _CONSOLE_RE.match(line)
    return int(match.group(1)) if match else None


def relay_step_s(rows: Sequence[Mapping[str, float]]) -> dict[int, float]:
    """relay's own ``time/step_s`` per 1-based step, from ``metrics.jsonl`` rows."""
    return {int(r["step"]) + 1: float(r["time/step_s"]) for r in rows}


def window_stats(durations: Mapping[int, float], first: int, last: int) -> Stats:
    """Statistics of steps ``first..last`` (1-based, inclusive); every one must be there."""
    steps = range(first, last + 1)
    missing = [s for s in steps if s not in durations]
    if missing:
        raise ValueError(f"no time for steps {missing} (have steps {sorted(durations)})")
    values = [float(durations[s]) for s in steps]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return Stats(statistics.fmean(values), sd, min(values), max(values), len(values))


def stage_means(columns: Mapping[str, Sequence[float | None]], first: int, last: int) -> dict[str, float]:
    """Mean of each per-step column (row i = step i+1) over steps ``first..last``, Nones left out."""
    means = {}
    for key, values in columns.items():
        window = [v for v in values[first - 1 : last] if v is not None]
        means[key] = round(statistics.fmean(window), 3) if window else math.nan
    return means


def _cells(summary: Mapping, ks: Sequence[int]) -> list[list[str]]:
    """One row per model: name (parameters), TRL mean, relay mean (TRL / relay) at each k."""
    rows = []
    for name, s in summary.items():
        params = f" ({s['params'] / 1e6:.2f}M params)" if s.get("params") else ""
        trl = s["trl"].mean
        row = [name + params, f"{trl:.2f}"]
        for k in ks:
            relay = s["relay"].get(k)
            row.append(f"{relay.mean:.2f} ({trl / relay.mean:.2f}x)" if relay else "")
        rows.append(row)
    return rows


def _header(ks: Sequence[int]) -> list[str]:
    return ["model", "TRL"] + [f"relay k={k}" for k in ks]


def format_table(summary: Mapping, ks: Sequence[int]) -> str:
    """The plain-text table, columns aligned."""
    rows = [_header(ks)] + _cells(summary, ks)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def format_markdown(summary: Mapping, ks: Sequence[int]) -> str:
    """The same table in markdown."""
    lines = ["| " + " | ".join(r) + " |" for r in [_header(ks)] + _cells(summary, ks)]
    return "\n".join(lines[:1] + ["|" + "---|" * (len(ks) + 2)] + lines[1:])


def format_spread(summary: Mapping, ks: Sequence[int]) -> str:
    """A markdown table of every run's mean, sd, min and max seconds per step."""
    lines = ["| model | trainer | mean s | sd s | min s | max s | steps |", "|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        runs = [("TRL", s["trl"])] + [(f"relay k={k}", s["relay"][k]) for k in ks if k in s["relay"]]
        for label, st in runs:
            lines.append(f"| {name} | {label} | {st.mean:.3f} | {st.sd:.3f} | {st.min:.3f} | {st.max:.3f} | {st.n} |")
    return "\n".join(lines)


def repeat_ratios(summary: Mapping, ks: Sequence[int]) -> dict[str, dict[int, list[float]]]:
    """Per model (``s["model"]``, the name without its repeat) and k: the TRL / relay ratio of
    each repeat, in run order. Each repeat's ratio compares runs made minutes apart, so the
    machine's slow drift cancels in it, not between repeats."""
    ratios: dict[str, dict[int, list[float]]] = {}
    for s in summary.values():
        per_k = ratios.setdefault(s.get("model", ""), {})
        for k in ks:
            if k in s["relay"]:
                per_k.setdefault(k, []).append(s["trl"].mean / s["relay"][k].mean)
    return ratios


def format_repeats(summary: Mapping, ks: Sequence[int]) -> str:
    """One line per model and k: every repeat's ratio, their mean and range."""
    lines = []
    for model, per_k in repeat_ratios(summary, ks).items():
        for k, values in per_k.items():
            each = ", ".join(f"{v:.2f}" for v in values)
            lines.append(
                f"{model} relay k={k}: {statistics.fmean(values):.2f}x mean over {len(values)} repeats "
                f"(range {min(values):.2f}-{max(values):.2f}; each: {each})"
            )
    return "\n".join(lines)
