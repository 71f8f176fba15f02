"""A LoRA run's output as ``model.path``: merged once into full weights, or trained further as the adapter;
an adapter whose base cannot be found is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from actors.learner.learner import Learner, LearnerConfig, LoraConfig
from actors.learner.sequence_objectives import SequenceObjective
from actors.messages import SequenceBatch
from actors.model.loading import AdapterBaseError, ModelConfig, load_tokenizer, resolve_model_path
from algorithms.config import AlgorithmConfig

SFT = SequenceObjective(name="sft")
LORA = LearnerConfig(lr=1e-2, lora=LoraConfig(enabled=True, r=4, alpha=8))


def _batch(step: int) -> SequenceBatch:
    g = torch.Generator().manual_seed(5)
    ids = [torch.randint(3, 300, (9,), generator=g).tolist() for _ in range(4)]
    return SequenceBatch(step, ids, [[0] * 3 + [1] * 6 for _ in ids])


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_config: ModelConfig, tmp_path_factory) -> tuple[Path, list[dict]]:
    """A LoRA adapter trained 3 steps (saved as a run's final/: adapter + tokenizer) and its scores."""
    learner = Learner(LORA, tiny_model_config, AlgorithmConfig(), 1.0, objective=SFT)
    for step in range(3):
        learner.train_sequences(_batch(step))
    path = tmp_path_factory.mktemp("lora") / "final"
    learner.save(str(path))
    load_tokenizer(resolve_model_path(tiny_model_config)).save_pretrained(path)
    return path, learner.score_sequences(_batch(0))


def test_merge_loads_the_trained_weights_as_a_full_model(adapter_dir, tiny_model_config) -> None:
    path, scores = adapter_dir
    model = ModelConfig(path=str(path), cache_dir=tiny_model_config.cache_dir)
    merged = resolve_model_path(model)
    assert (Path(merged) / "config.json").exists() and not (Path(merged) / "adapter_config.json").exists()
    assert resolve_model_path(model) == merged  # built once
    learner = Learner(LearnerConfig(), model, AlgorithmConfig(), 1.0, objective=SFT)  # full fine-tuning from it
    assert [s["logp_sum"] for s in learner.score_sequences(_batch(0))] == pytest.approx(
        [s["logp_sum"] for s in scores], abs=1e-3
    )


def test_continue_trains_the_same_adapter(adapter_dir, tiny_model_config) -> None:
    path, scores = adapter_dir
    model = ModelConfig(path=str(path), cache_dir=tiny_model_config.cache_dir, adapter="continue")
    learner = Learner(LORA, model, AlgorithmConfig(), 1.0, objective=SFT)
    trainable = [n for n, p in learner.backend.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert [s["logp_sum"] for s in learner.score_sequences(_batch(0))] == pytest.approx(
        [s["logp_sum"] for s in scores], abs=1e-4
    )
    learner.train_sequences(_batch(0))
    with pytest.raises(ValueError, match="learner.lora.enabled"):
        Learner(LearnerConfig(), model, AlgorithmConfig(), 1.0, objective=SFT)


def test_adapter_without_its_base_is_a_one_line_error(adapter_dir, tmp_path: Path) -> None:
    path, _ = adapter_dir
    moved = tmp_path / "adapter"
    moved.mkdir()
    for f in path.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone" / "base")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterBaseError, match=r"is a LoRA adapter whose base model .*gone/base cannot be found"):
        resolve_model_path(ModelConfig(path=str(moved)))
    from ray_jobs import sft

    assert sft.main([f"model.path={moved}", "wandb.mode=disabled", f"run.output_dir={tmp_path / 'run'}"]) == 2


def test_an_actor_on_another_node_merges_the_adapter_into_its_own_cache(adapter_dir, tmp_path: Path) -> None:
    """The driver hands actors the adapter's path (shared storage) and the cache path, never its own merged
    copy: on a node whose cache lacks the merge (here node 1's cache moved away, as node 2 would not see
    it) the actor merges there, under the cache's lock, into the same weights."""
    import shutil

    from safetensors.torch import load_file

    from ray_jobs.runtime.actor_settings import absolute_model

    path, _ = adapter_dir
    node1 = tmp_path / "cache"
    shipped = absolute_model(ModelConfig(path=str(path), cache_dir=str(node1)))  # the driver's side, on node 1
    on_node1 = Path(resolve_model_path(shipped))
    assert on_node1.parent == node1 and (on_node1 / "config.json").is_file()
    merged1 = load_file(on_node1 / "model.safetensors")
    shutil.move(node1, tmp_path / "node1-disk")  # node 2: the same cache path, without node 1's files
    on_node2 = Path(resolve_model_path(shipped))
    assert (on_node2 / "config.json").is_file() and on_node2.parent == node1
    merged2 = load_file(on_node2 / "model.safetensors")
    assert merged1.keys() == merged2.keys() and all(torch.equal(merged1[k], merged2[k]) for k in merged1)
