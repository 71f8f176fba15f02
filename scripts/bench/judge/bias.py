"""The judge's bias controls, measured against the stand-in judge with known biases.

    python -m scripts.bench.judge.bias [--groups 200] [--group-size 4] [--position-bias 3]
                                       [--length-bias 3] [--seed 0]

Candidates: for each of ``--groups`` business descriptions of
``configs/data/business_descriptions.jsonl``, ``--group-size`` domain names of one to four
words (the description's own words and filler words, drawn with ``--seed``), so quality and
length vary within a group. The stand-in judge (``rewards/stand_in/judge_server.py``, in
process) scores them by its heuristic plus a known bias.

**Position.** Each group is handed to the judge shortest first, the order in which a
collector that streams finished completions receives them. The judge adds
``--position-bias`` points (0-10 scale, every criterion) to the completion shown first, none
to the last, linearly in between. Settings: ``fixed`` shows the group in the order it came
(what a judge without an order control does; measured by replacing relay's seeded shuffle
with the identity), ``shuffled`` (``judge.mode: group``), ``two passes``
(``judge.group_passes: 2``). Per setting, over the groups' within-prompt residuals (each
reward minus its group's mean, so prompt difficulty is left out):

* *position share*: the share of the reward's variance explained by the position the
  completion was shown at (eta squared; ``judge/position_effect``'s formula);
* *bias share*: the share of the reward's variance that is bias, ``SS(r - r0) / SS(r)``
  with ``r0`` the same judge's reward without the bias;
* *bias-length correlation*: Spearman's correlation of the bias ``r - r0`` with the
  completion's length: how much of the bias the policy could earn by writing shorter.

**Length.** Pointwise, with ``--length-bias`` points times ``min(1, characters / 100)`` added:
Spearman's correlation of the reward with length (``judge/length_corr``), with and
without the bias.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr
from scipy.stats import spearmanr

from rewards.judge import group as group_module
from rewards.judge.config import JudgeConfig
from rewards.judge.llm_judge import JudgeReward, JudgeScore
from rewards.stand_in.judge_heuristic import content_words
from rewards.stand_in.judge_server import JudgeServer, ServerSettings

DATA = Path(__file__).resolve().parents[3] / "configs" / "data" / "business_descriptions.jsonl"
FILLER = ("best", "global", "hub", "zone", "prime", "smart", "now", "online", "express", "world", "pro", "one")


@dataclass(frozen=True)
class Group:
    """One prompt and its candidates, shortest first (the order they are handed to the judge)."""

    key: str
    request: str
    candidates: list[str]


def make_groups(n: int, size: int, seed: int) -> list[Group]:
    """``n`` groups of ``size`` distinct candidates of one to four words each, shortest first."""
    rng = random.Random(seed)
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if not r.get("inappropriate")][:n]
    groups = []
    for row in rows:
        words = content_words(row["description"]) or ["shop"]
        names: set[str] = set()
        while len(names) < size:
            picked = [rng.choice(words if rng.random() < 0.6 else FILLER) for _ in range(rng.randint(1, 4))]
            names.add("".join(picked) + ".com")
        groups.append(Group(row["id"], row["description"], sorted(names, key=lambda c: (len(c), c))))
    return groups


@contextmanager
def stand_in(settings: ServerSettings, **judge: object) -> Iterator[JudgeConfig]:
    """The config of a judge on an in-process stand-in judge (``judge``: JudgeConfig fields)."""
    with JudgeServer(settings=settings) as server:
        yield JudgeConfig(base_url=server.base_url, cache_size=0, check_endpoint=False, **judge)


@contextmanager
def fixed_order() -> Iterator[None]:
    """Show every group in the order it came (the identity instead of relay's seeded shuffle)."""
    shuffle = group_module.shown_order
    group_module.shown_order = lambda indices, group_key: list(indices)
    try:
        yield
    finally:
        group_module.shown_order = shuffle


def _scores(config: JudgeConfig, jobs: Callable[[JudgeReward], list[Awaitable[object]]]) -> list[object]:
    """The jobs' results on one event loop (the judge's HTTP clients belong to it)."""

    async def run() -> list[object]:
        reward = JudgeReward(config, SecretStr("unused"))
        try:
            return list(await asyncio.gather(*jobs(reward)))
        finally:
            await reward.aclose()

    return asyncio.run(run())


def judge_groups(config: JudgeConfig, groups: Sequence[Group]) -> list[list[JudgeScore]]:
    """Every group's scores, in candidate order; a completion without a score fails the benchmark."""
    out = _scores(config, lambda r: [r.score_group(g.request, g.candidates, g.key) for g in groups])
    scores = [s for group in out for s in group]  # type: ignore[attr-defined]
    bad = [s for s in scores if not isinstance(s, JudgeScore)]
    if bad:
        raise RuntimeError(f"{len(bad)} completions got no score (first: {bad[0]})")
    size = len(groups[0].candidates) if groups else 0
    return [scores[i : i + size] for i in range(0, len(scores), size)]


def residuals(values: Sequence[Sequence[float]]) -> list[list[float]]:
    """Each value minus the mean of its group."""
    return [[v - statistics.fmean(g) for v in g] for g in values]


def position_share(rewards: Sequence[Sequence[float]], positions: Sequence[Sequence[int]]) -> float:
    """Eta squared of the within-group residuals by position: SS_position / SS_total."""
    res = residuals(rewards)
    total = sum(r * r for g in res for r in g)
    by_position: dict[int, list[float]] = {}
    for g, p in zip(res, positions):
        for r, q in zip(g, p):
            by_position.setdefault(q, []).append(r)
    explained = sum(len(v) * statistics.fmean(v) ** 2 for v in by_position.values())
    return explained / total if total else 0.0


def bias_share(rewards: Sequence[Sequence[float]], unbiased: Sequence[Sequence[float]]) -> float:
    """SS of the within-group residual of the bias ``r - r0`` over SS of the residual of ``r``."""
    bias = residuals([[a - b for a, b in zip(r, u)] for r, u in zip(rewards, unbiased)])
    total = sum(r * r for g in residuals(rewards) for r in g)
    return sum(b * b for g in bias for b in g) / total if total else 0.0


def correlation(x: Sequence[float], y: Sequence[float]) -> float:
    return float(spearmanr(x, y).statistic)


def position_rows(args: argparse.Namespace, groups: list[Group]) -> list[tuple[str, float, float, float]]:
    """(setting, position share, bias share, bias-length correlation) of the three settings."""
    with stand_in(ServerSettings(), mode="group", max_group_size=args.group_size) as config:
        unbiased = [[s.score for s in g] for g in judge_groups(config, groups)]
    biased = ServerSettings(position_bias=args.position_bias)
    settings: list[tuple[str, int, Callable[[], AbstractContextManager[None]]]] = [
        ("fixed order", 1, fixed_order),
        ("shuffled", 1, nullcontext),
        ("shuffled, two passes", 2, nullcontext),
    ]
    lengths = [len(c) for g in groups for c in g.candidates]
    rows = []
    for name, passes, order in settings:
        with order(), stand_in(biased, mode="group", group_passes=passes, max_group_size=args.group_size) as config:
            scores = judge_groups(config, groups)
        rewards = [[s.score for s in g] for g in scores]
        positions = [[int(s.flags["position"]) for s in g] for g in scores]
        bias = [a - b for r, u in zip(rewards, unbiased) for a, b in zip(r, u)]
        rows.append(
            (name, position_share(rewards, positions), bias_share(rewards, unbiased), correlation(bias, lengths))
        )
    return rows


def length_rows(args: argparse.Namespace, groups: list[Group]) -> list[tuple[float, float]]:
    """(length bias, Spearman of reward with length) pointwise, without and with the bias."""
    candidates = [(g.request, c) for g in groups for c in g.candidates]
    lengths = [len(c) for _, c in candidates]
    rows = []
    for bias in (0.0, args.length_bias):
        with stand_in(ServerSettings(length_bias=bias)) as config:
            scores = _scores(config, lambda r: [r.score(q, c) for q, c in candidates])
        rows.append((bias, correlation([s.score for s in scores], lengths)))  # type: ignore[attr-defined]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.judge.bias", description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=200, help="prompt groups (at most the data file's rows)")
    parser.add_argument("--group-size", type=int, default=4, help="completions per group")
    parser.add_argument("--position-bias", type=float, default=3.0, help="points the first shown completion gets")
    parser.add_argument("--length-bias", type=float, default=3.0, help="points per 100 characters (capped at 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the candidates")
    args = parser.parse_args(argv)
    groups = make_groups(args.groups, args.group_size, args.seed)
    print(f"{len(groups)} groups of {args.group_size}, position bias {args.position_bias:g} points (first shown)")
    print("| order | position share | bias share | bias-length correlation |\n|---|---|---|---|")
    for name, share, bias, corr in position_rows(args, groups):
        print(f"| {name} | {share:.3f} | {bias:.3f} | {corr:+.3f} |")
    print("\n| length bias (points per 100 characters) | reward-length correlation |\n|---|---|")
    for bias, corr in length_rows(args, groups):
        print(f"| {bias:g} | {corr:+.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
