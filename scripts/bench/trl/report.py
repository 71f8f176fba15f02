"""The pure parts of ``scripts/bench/vs_trl.py``: step times from logs, the mean over a
window of steps, and the tables. Steps are numbered from 1 here (relay's
``metrics.jsonl`` counts from 0; its console line says ``step  N/M`` from 1)."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

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


def summarise(results: dict, last: int) -> dict:
    """Per model: TRL's and each relay column's window statistics (and relay's own time/step_s and
    stage means)."""
    summary = {}
    for name, r in results.items():
        summary[name] = {
            "model": r.get("model", name),
            "params": r.get("params"),
            "trl": window_stats(r["trl"]["durations"], 3, last),
            "trl_step_time": window_stats(r["trl"]["step_time"], 3, last),
            "relay": {col: window_stats(v["durations"], 3, last) for col, v in r["relay"].items()},
            "relay_step_s": {col: window_stats(v["step_s"], 3, last) for col, v in r["relay"].items()},
            "stages": {col: stage_means(v["stages"], 3, last) for col, v in r["relay"].items()},
        }
    return summary


def summary_json(summary: dict) -> dict:
    """``summarise``'s statistics as plain data."""
    plain = {"relay": lambda d: {k: asdict(v) for k, v in d.items()}, "trl": asdict, "trl_step_time": asdict}
    plain["relay_step_s"] = plain["relay"]
    return {name: {key: plain.get(key, lambda v: v)(value) for key, value in s.items()} for name, s in summary.items()}


PLACEMENTS = ("separate", "colocated")
"""The ``pipeline.placement`` values the comparison runs relay under (``--placements``)."""


def column(placement: str, k: int) -> str:
    """A relay run's column: ``relay k=0`` for the separate placement (the table's name before
    placements existed), ``colocated k=0`` for the colocated one."""
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r} (one of {', '.join(PLACEMENTS)})")
    return f"{'relay' if placement == 'separate' else placement} k={k}"


def columns(placements: Sequence[str], ks: Sequence[int]) -> list[tuple[str, int, str]]:
    """Every relay run as (placement, k, column), in run and table order: each k's placements side by side."""
    return [(p, k, column(p, k)) for k in ks for p in placements]


def _cells(summary: Mapping, cols: Sequence[str]) -> list[list[str]]:
    """One row per model: name (parameters), TRL mean, relay mean (TRL / relay) in each column."""
    rows = []
    for name, s in summary.items():
        params = f" ({s['params'] / 1e6:.2f}M params)" if s.get("params") else ""
        trl = s["trl"].mean
        row = [name + params, f"{trl:.2f}"]
        for col in cols:
            relay = s["relay"].get(col)
            row.append(f"{relay.mean:.2f} ({trl / relay.mean:.2f}x)" if relay else "")
        rows.append(row)
    return rows


def _header(cols: Sequence[str]) -> list[str]:
    return ["model", "TRL", *cols]


def format_table(summary: Mapping, cols: Sequence[str]) -> str:
    """The plain-text table, columns aligned."""
    rows = [_header(cols)] + _cells(summary, cols)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def format_markdown(summary: Mapping, cols: Sequence[str]) -> str:
    """The same table in markdown."""
    lines = ["| " + " | ".join(r) + " |" for r in [_header(cols)] + _cells(summary, cols)]
    return "\n".join(lines[:1] + ["|" + "---|" * (len(cols) + 2)] + lines[1:])


def format_spread(summary: Mapping, cols: Sequence[str]) -> str:
    """A markdown table of every run's mean, sd, min and max seconds per step."""
    lines = ["| model | trainer | mean s | sd s | min s | max s | steps |", "|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        runs = [("TRL", s["trl"])] + [(col, s["relay"][col]) for col in cols if col in s["relay"]]
        for label, st in runs:
            lines.append(f"| {name} | {label} | {st.mean:.3f} | {st.sd:.3f} | {st.min:.3f} | {st.max:.3f} | {st.n} |")
    return "\n".join(lines)


STAGE_COLUMNS = {
    "step": "time/step_s",
    "generate": "time/generate_s",
    "judge": "time/judge_s",
    "forward ahead": "time/forward_ahead_s",
    "train": "time/train_s",
    "weight sync": "time/weight_sync_s",
}
"""The stage table's columns: relay's own ``time/*`` metrics (seconds per step, summed over the step's batches)."""


def format_stages(summary: Mapping, cols: Sequence[str]) -> str:
    """A markdown table of each relay run's mean stage times over the window (``s["stages"][col]``,
    ``stage_means``'s output); a stage the run did not log (NaN) is an empty cell."""
    lines = ["| model | run | " + " | ".join(f"{c} s" for c in STAGE_COLUMNS) + " |"]
    lines.append("|" + "---|" * (len(STAGE_COLUMNS) + 2))
    for name, s in summary.items():
        for col in cols:
            means = s.get("stages", {}).get(col)
            if means is None:
                continue
            cells = [means.get(key, math.nan) for key in STAGE_COLUMNS.values()]
            lines.append(f"| {name} | {col} | " + " | ".join("" if math.isnan(v) else f"{v:.2f}" for v in cells) + " |")
    return "\n".join(lines)


def repeat_ratios(summary: Mapping, cols: Sequence[str]) -> dict[str, dict[str, list[float]]]:
    """Per model (``s["model"]``, the name without its repeat) and column: the TRL / relay ratio of
    each repeat, in run order. Each repeat's ratio compares runs made minutes apart, so the
    machine's slow drift cancels in it, not between repeats."""
    ratios: dict[str, dict[str, list[float]]] = {}
    for s in summary.values():
        per_col = ratios.setdefault(s.get("model", ""), {})
        for col in cols:
            if col in s["relay"]:
                per_col.setdefault(col, []).append(s["trl"].mean / s["relay"][col].mean)
    return ratios


def format_repeats(summary: Mapping, cols: Sequence[str]) -> str:
    """One line per model and column: every repeat's ratio, their mean and range."""
    lines = []
    for model, per_col in repeat_ratios(summary, cols).items():
        for col, values in per_col.items():
            each = ", ".join(f"{v:.2f}" for v in values)
            lines.append(
                f"{model} {col}: {statistics.fmean(values):.2f}x mean over {len(values)} repeats "
                f"(range {min(values):.2f}-{max(values):.2f}; each: {each})"
            )
    return "\n".join(lines)


def format_load(samples: Sequence[float]) -> str:
    """The 1-minute load average sampled during a run: mean and max (``nan`` when never sampled)."""
    load = list(samples) or [math.nan]
    return f"load {statistics.fmean(load):.1f} mean, {max(load):.1f} max"


def format_loads(results: Mapping) -> str:
    """One line per model: the load average during TRL's run and each relay run."""
    lines = []
    for name, r in results.items():
        runs = [("TRL", r["trl"])] + list(r["relay"].items())
        lines.append(f"  {name}: " + "; ".join(f"{label} {format_load(run['load_1m'])}" for label, run in runs))
    return "\n".join(lines)


def format_cross_check(summary: Mapping) -> str:
    """One line per model: TRL's own logged step time and relay's ``time/step_s`` in each column."""
    lines = []
    for name, s in summary.items():
        own = ", ".join(f"{col} time/step_s {v.mean:.3f}" for col, v in s["relay_step_s"].items())
        lines.append(f"  {name}: TRL step_time {s['trl_step_time'].mean:.3f}, {own}")
    return "\n".join(lines)
