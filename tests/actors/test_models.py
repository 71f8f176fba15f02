"""The built-in tiny model's cache: concurrent callers build it once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from actors.model import loading as models
from actors.model.loading import ModelConfig, TinyModelConfig, build_tiny_model, tiny_model_dir

SMALL = TinyModelConfig(hidden_size=32, num_heads=1, num_kv_heads=1, num_layers=1, intermediate_size=32, warmup_steps=0)


def test_concurrent_callers_build_the_tiny_model_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three threads ask at once (each with its own lock file handle, as separate processes
    have): one builds, the others wait and find it made; a killed builder's leftover
    ``.tmp-*`` directory is removed, and the model loads."""
    config = ModelConfig(cache_dir=str(tmp_path), tiny=SMALL)
    stale = tmp_path / f"{tiny_model_dir(config).name}.tmp-99999"
    stale.mkdir()
    (stale / "config.json").write_text("{half written")
    builds: list[Path] = []
    real_build = models._build_tiny

    def counted(model: ModelConfig, target: Path) -> None:
        builds.append(target)
        real_build(model, target)

    monkeypatch.setattr(models, "_build_tiny", counted)
    start = threading.Barrier(3)
    results: list[Path] = []

    def call() -> None:
        start.wait()
        results.append(build_tiny_model(config))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert builds == [tiny_model_dir(config)]
    assert results == [tiny_model_dir(config)] * 3
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [tiny_model_dir(config).name, f"{tiny_model_dir(config).name}.lock"]
    )
    assert models.load_causal_lm(str(results[0]), "float32").config.hidden_size == 32
