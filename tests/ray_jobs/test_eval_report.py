"""The evaluation report: results built from hand-made item results, checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_jobs.evaluation.report import ItemResult, build_results, comparison_sentence, from_json, to_json, write_report

CONDITIONS = ["base", "trained", "best_of_4"]
IDS = [f"i{k}" for k in range(1, 9)]
STRATA = {i: "short" if k < 4 else "long" for k, i in enumerate(IDS)}  # i1-i4 short, i5-i8 long
LABELS = dict(zip(IDS, [True, True, False, False, True, False, None, False]))  # True: should be refused
# per condition: scores (None: unscored) and blocked flags, items i1..i8
SCORES = {
    "base": [0.50, 0.40, 0.60, 0.50, 0.30, 0.70, 0.40, 0.60],
    "trained": [0.75, 0.50, 0.60, 0.75, 0.50, 0.70, 0.50, None],
    "best_of_4": [0.75, 0.25, 0.50, 0.50, 0.50, 0.50, 0.25, 0.50],
}
BLOCKED = {
    "base": [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0],
    "trained": [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, None],
    "best_of_4": [0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0],
}
# forward passes, generated tokens, judge calls, seconds per item
COST = {"base": (1.0, 10, 1, 0.5), "trained": (1.0, 12, 1, 0.5), "best_of_4": (5.0, 40, 1, 2.0)}


def _items(strata: bool = True, labels: bool = True) -> list[ItemResult]:
    out = []
    for c in CONDITIONS:
        fp, tokens, calls, secs = COST[c]
        k = 4 if c == "best_of_4" else 1
        for n, i in enumerate(IDS):
            score = SCORES[c][n]
            out.append(
                ItemResult(
                    condition=c,
                    item_id=i,
                    prompt=f"describe business {i}",
                    stratum=STRATA[i] if strata else None,
                    label=LABELS[i] if labels else None,
                    candidates=[f"answer {j}" for j in range(k)],
                    selected=0,
                    score=score,
                    error=None if score is not None else "judge timed out",
                    blocked=BLOCKED[c][n],
                    forward_passes=fp,
                    generated_tokens=tokens,
                    judge_calls=calls,
                    seconds=secs,
                )
            )
    return out


@pytest.fixture(scope="module")
def results() -> dict:
    return build_results(_items(), CONDITIONS, baseline="base", resamples=2000, seed=11)


def test_item_result_json_round_trip() -> None:
    for item in _items()[7:9] + _items()[15:16]:  # includes trained's unscored i8
        assert from_json(json.loads(json.dumps(to_json(item)))) == item
    assert to_json(_items()[15])["score"] is None and to_json(_items()[15])["error"] == "judge timed out"
    with pytest.raises(ValueError, match="exactly one of score and error"):
        ItemResult("base", "x", "p", None, None, [], None, None, None, None, 1.0, 0, 0, 0.0)
    with pytest.raises(ValueError, match="unknown"):
        from_json({**to_json(_items()[0]), "extra": 1})


def test_condition_summaries_by_hand(results: dict) -> None:
    per = results["conditions"]
    # base: (0.5 + 0.4 + 0.6 + 0.5 + 0.3 + 0.7 + 0.4 + 0.6) / 8 = 4.0 / 8
    assert (per["base"]["n"], per["base"]["n_missing"]) == (8, 0)
    assert per["base"]["mean"] == pytest.approx(0.5)
    # trained: i8 unscored -> (0.75 + 0.5 + 0.6 + 0.75 + 0.5 + 0.7 + 0.5) / 7 = 4.3 / 7, not 4.3 / 8
    assert (per["trained"]["n"], per["trained"]["n_missing"]) == (7, 1)
    assert per["trained"]["mean"] == pytest.approx(4.3 / 7)
    # best_of_4: (0.75 + 0.25 + 0.5 + 0.5 + 0.5 + 0.5 + 0.25 + 0.5) / 8 = 3.75 / 8
    assert per["best_of_4"]["mean"] == pytest.approx(0.46875)
    assert per["base"]["ci_low"] < 0.5 < per["base"]["ci_high"] and per["base"]["interval"] == "t"
    assert (results["items"], results["baseline"], results["reference"]) == (8, "base", "base")


def test_costs_ratio_and_pareto_by_hand(results: dict) -> None:
    per = results["conditions"]
    assert per["best_of_4"]["forward_passes_per_item"] == 5.0  # 4 samples + 1 critic pass
    assert per["trained"]["generated_tokens_per_item"] == 12.0
    assert per["best_of_4"]["seconds_per_item"] == 2.0 and per["base"]["judge_calls_per_item"] == 1.0
    # cost ratio: 5.0 / 1.0 forward passes; quality lift: 0.46875 - 0.5
    assert [per[c]["cost_ratio"] for c in CONDITIONS] == [1.0, 1.0, 5.0]
    assert per["best_of_4"]["quality_lift"] == pytest.approx(-0.03125)
    assert per["base"]["quality_lift"] == 0.0
    # (cost, mean): base (1, 0.5), trained (1, 0.614), best_of_4 (5, 0.469): trained dominates both
    assert [per[c]["pareto"] for c in CONDITIONS] == [False, True, False]


def test_block_rates_by_hand(results: dict) -> None:
    per = results["conditions"]
    # inappropriate: i1, i2, i5; appropriate: i3, i4, i6, i8; i7 unlabelled
    # base blocks i1, i5 of the first (2/3) and i6 of the second (1/4)
    assert per["base"]["block_rate"] == pytest.approx(2 / 3) and per["base"]["false_block_rate"] == 0.25
    # trained blocks i1, i2, i5 (3/3) and none of i3, i4, i6 (i8 unscored: flag unknown)
    assert (per["trained"]["block_rate"], per["trained"]["false_block_rate"]) == (1.0, 0.0)
    # best_of_4 blocks i5 (1/3) and i4, i8 (2/4)
    assert per["best_of_4"]["block_rate"] == pytest.approx(1 / 3) and per["best_of_4"]["false_block_rate"] == 0.5


def test_comparisons_by_hand_and_the_unscored_item(results: dict) -> None:
    trained, best = results["comparisons"]
    assert (trained["a"], trained["b"], best["a"], best["b"]) == ("base", "trained", "base", "best_of_4")
    # trained - base, i8 left out: +.25, +.1, 0, +.25, +.2, 0, +.1 -> W/L/T 5/0/2, mean 0.9 / 7
    assert trained["n"] == 7 and (trained["wins"], trained["losses"], trained["ties"]) == (5, 0, 2)
    assert trained["mean_delta"] == pytest.approx(0.9 / 7)
    # every resample mean is >= 0; it is 0 only if all 7 draws hit the two ties: (2/7)^7 ~ 1.5e-4
    assert trained["p_one_sided"] < 0.005 and trained["ci_low"] > 0 and trained["significant"]
    # best_of_4 - base: +.25, -.15, -.1, 0, +.2, -.2, -.15, -.1 -> W/L/T 2/5/1, mean -0.25 / 8
    assert best["n"] == 8 and (best["wins"], best["losses"], best["ties"]) == (2, 5, 1)
    assert best["mean_delta"] == pytest.approx(-0.03125)
    assert best["ci_low"] < 0 < best["ci_high"] and not best["significant"]
    assert (best["resamples"], best["seed"]) == (2000, 11)
    assert results["missing"] == [
        {"item_id": "i8", "conditions": ["trained"], "errors": {"trained": "judge timed out"}}
    ]


def test_strata_by_hand(results: dict) -> None:
    base, trained = results["conditions"]["base"]["strata"], results["conditions"]["trained"]["strata"]
    assert list(base) == ["long", "short"]
    assert base["short"]["n"] == 4 and base["short"]["mean"] == pytest.approx(0.5)  # 2.0 / 4
    assert trained["long"]["n"] == 3 and trained["long"]["mean"] == pytest.approx(1.7 / 3)  # i5-i7
    assert trained["short"]["mean"] == pytest.approx(0.65)  # 2.6 / 4
    long_trained = next(c for c in results["strata_comparisons"] if c["stratum"] == "long" and c["b"] == "trained")
    # i5, i6, i7: +.2, 0, +.1 -> 2/0/1, mean 0.1
    assert long_trained["n"] == 3 and (long_trained["wins"], long_trained["ties"]) == (2, 1)
    assert long_trained["mean_delta"] == pytest.approx(0.1)
    assert len(results["strata_comparisons"]) == 4  # 2 strata x 2 comparisons


def test_every_pair_without_a_baseline_and_no_labels_or_strata() -> None:
    res = build_results(_items(strata=False, labels=False), CONDITIONS, baseline=None, resamples=500, seed=0)
    assert [(c["a"], c["b"], c["n"]) for c in res["comparisons"]] == [
        ("base", "trained", 7),
        ("base", "best_of_4", 8),
        ("trained", "best_of_4", 7),
    ]
    assert res["reference"] == "base" and "strata_comparisons" not in res
    for entry in res["conditions"].values():
        assert entry["block_rate"] is None and entry["false_block_rate"] is None and "strata" not in entry


def test_bad_input_is_rejected() -> None:
    items = _items()
    with pytest.raises(ValueError, match="appears twice"):
        build_results(items + items[:1], CONDITIONS, "base", 100, 0)
    with pytest.raises(ValueError, match="not one of"):
        build_results(items, ["base", "trained"], "base", 100, 0)
    with pytest.raises(ValueError, match="baseline"):
        build_results(items, CONDITIONS, "nope", 100, 0)


def test_comparison_sentences() -> None:
    row = {
        "a": "base",
        "b": "trained",
        "n": 52,
        "mean_delta": 0.12,
        "ci_low": 0.05,
        "ci_high": 0.19,
        "p_one_sided": 0.0004,
        "significant": True,
    }
    assert comparison_sentence(row, 0.95) == (
        "trained vs base: Δ = +0.120, 95 % CI [+0.050, +0.190], one-sided "
        "p = 0.000 (n = 52): significant at the 5 % level (trained scores higher)."
    )
    null = {**row, "mean_delta": 0.0025, "ci_low": -0.019, "ci_high": 0.023, "p_one_sided": 0.4, "significant": False}
    assert comparison_sentence(null, 0.95).endswith(
        "p = 0.400 (n = 52): the CI includes 0: no significant difference at the 5 % level (an honest null result)."
    )
    assert "no comparison" in comparison_sentence({**row, "n": 0}, 0.95)


def test_write_report_files(tmp_path: Path, results: dict) -> None:
    paths = write_report(tmp_path / "eval", results, "CPU default evaluation")
    names = [p.name for p in paths]
    assert names == [
        "results.json",
        "report.md",
        "condition_means.png",
        "condition_means_by_stratum.png",
        "cost_quality.png",
    ]
    assert json.loads((tmp_path / "eval" / "results.json").read_text()) == results
    assert not list((tmp_path / "eval").glob("*.tmp"))
    for p in paths[2:]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
    md = (tmp_path / "eval" / "report.md").read_text()
    assert md.startswith("# CPU default evaluation\n")
    assert "| trained | 7 | 1 | 0.614 |" in md  # the conditions table: n, missing, mean
    assert "trained vs base: Δ = +0.129, 95 % CI [" in md
    assert "(n = 7): significant at the 5 % level (trained scores higher)." in md
    assert "best_of_4 vs base: Δ = -0.031" in md and "no significant difference at the 5 % level" in md
    assert "| 2/5/1 |" in md and "| 5/0/2 |" in md
    assert "## By stratum" in md and "Dominated" in md and "base, best_of_4." in md
    assert "| best_of_4 | 5.000 | 40.000 | 1.000 | 2.000 | 5.000 | -0.031 | no |" in md
    assert "1 item(s) unscored" in md and "`i8`: trained (judge timed out)" in md
    for png in ("condition_means.png", "condition_means_by_stratum.png", "cost_quality.png"):
        assert f"]({png})" in md
    # the report can be rebuilt from results.json alone
    again = write_report(tmp_path / "again", json.loads(paths[0].read_text()), "again")
    assert (tmp_path / "again" / "report.md").read_text().replace("# again", "# CPU default evaluation", 1) == md
    assert len(again) == 5


def test_a_condition_without_records_reports_nulls(tmp_path: Path) -> None:
    # an interrupted run: best_of_4 has no record yet, trained one scored item (i1)
    items = [i for i in _items() if i.condition == "base" or (i.condition == "trained" and i.item_id == "i1")]
    res = build_results(items, CONDITIONS, "base", 200, 0)
    empty = res["conditions"]["best_of_4"]
    assert (empty["n"], empty["n_missing"], empty["mean"], empty["sd"]) == (0, 8, None, None)
    assert (empty["forward_passes_per_item"], empty["cost_ratio"], empty["pareto"]) == (None, None, False)
    assert res["conditions"]["trained"]["n_missing"] == 7  # i2-i8 have no record
    trained, best = res["comparisons"]
    assert trained["n"] == 1 and not trained["significant"]  # one pair: too few, whatever its Δ
    assert best["n"] == 0 and best["mean_delta"] is None
    assert len(res["missing"]) == 8 and res["missing"][0]["errors"] == {"best_of_4": "no record"}
    write_report(tmp_path, res, "partial")
    md = (tmp_path / "report.md").read_text()
    assert "best_of_4 vs base: no item is scored under both" in md and "too few to judge significance" in md


def test_pass_rates_get_wilson_intervals_inside_0_and_1() -> None:
    """Verification-style scores (every one 0 or 1): the conditions and strata report Wilson
    intervals, which stay within [0, 1] even when a stratum of four items all pass."""
    import dataclasses

    items = [
        dataclasses.replace(r, score=1.0 if r.score is None or r.score >= 0.5 else 0.0, error=None) for r in _items()
    ]  # >= 0.5 passes; trained's unscored i8 passes too
    got = build_results(items, CONDITIONS, baseline="base", resamples=200, seed=3)
    short = got["conditions"]["trained"]["strata"]["short"]  # 0.75, 0.5, 0.6, 0.75: all pass
    assert (short["n"], short["mean"], short["interval"]) == (4, 1.0, "wilson")
    assert 0.0 < short["ci_low"] < 1.0 and short["ci_high"] == pytest.approx(1.0)
    for entry in got["conditions"].values():
        assert entry["interval"] == "wilson" and 0.0 <= entry["ci_low"] <= entry["mean"] <= entry["ci_high"] <= 1.0
