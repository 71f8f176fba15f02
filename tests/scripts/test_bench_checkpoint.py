"""The checkpoint benchmark's structure and accounting on the tiny model (never its timings)."""

from __future__ import annotations

import json
from pathlib import Path

from scripts.bench.checkpoint import COLUMNS, MODES, main


def test_tiny_table_and_accounting(tmp_path: Path, tiny_model_config, capsys) -> None:
    out = tmp_path / "ckpt.json"
    assert (
        main(
            [
                "--models",
                "tiny",
                "--repeats",
                "1",
                "--cache-dir",
                tiny_model_config.cache_dir,
                "--workdir",
                str(tmp_path),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("| model"))
    assert [c.strip() for c in header.strip("|").split("|")] == list(COLUMNS)
    assert sum(line.startswith("| tiny |") for line in printed.splitlines()) == len(MODES)

    result = json.loads(out.read_text())
    summary = {s["mode"]: s for s in result["summary"]}
    assert set(summary) == set(MODES)
    for mode, s in summary.items():
        assert s["repeats"] == 1 and s["exact"] is True, mode
        assert s["ckpt_bytes"] > 0 and s["hf_bytes"] > 0
        # weights + AdamW's two moments, all in the parameters' dtype, plus small files
        assert s["ckpt_bytes"] >= 3 * s["trainable_bytes"], mode
        assert s["write_s"] == s["ckpt_s"] + s["hf_s"]
        assert all(s[k] >= 0 for k in ("ckpt_s", "hf_s", "resume_s", "load_s"))
        assert s["resume_s"] >= s["load_s"]
    full, lora = summary["full"], summary["lora"]
    assert lora["trainable_params"] < full["trainable_params"] and lora["ckpt_bytes"] < full["ckpt_bytes"]
    assert lora["hf_bytes"] < full["hf_bytes"]  # the adapter alone
    assert full["hf_bytes"] >= full["trainable_bytes"]  # the whole policy, tied weights once
    assert list(tmp_path.iterdir()) == [out]  # every checkpoint was cleaned up
