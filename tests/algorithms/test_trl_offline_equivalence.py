"""One step of our SFT, SimPO and DPO equals TRL 1.16's ``SFTTrainer`` (completion-only loss),
``CPOTrainer(loss_type="simpo", cpo_alpha=0)`` and ``DPOTrainer`` (sigmoid), in loss and gradient.

Through the job path: the rows go through the job's config, ``load_sequences`` (tokenisation
and masks) and ``Learner.train_sequences`` (the gradient read just before the optimiser step);
TRL's side goes through its own dataset preparation, collator and ``compute_loss``. Both start
from the same tiny model in float32, one batch holding every row.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

from actors.learner.learner import Learner  # noqa: E402
from actors.model.loading import load_causal_lm, load_tokenizer, resolve_model_path  # noqa: E402
from algorithms.config import AlgorithmConfig  # noqa: E402
from ray_jobs import preference, sft  # noqa: E402
from ray_jobs.config.offline import load_job_config  # noqa: E402
from ray_jobs.data.sequences import load_sequences, to_batch  # noqa: E402

ATOL = 1e-5
ROWS = 6


def _rows(path: str, n: int) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()[:n]]


def _write(tmp_path: Path, rows: list[dict]) -> str:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _ours(job, config_class, tmp_path: Path, tiny_model_config, rows: list[dict], extra: list[str]):
    """(loss, {name: grad}) of one step of our job's learner on ``rows``."""
    cfg = load_job_config(
        config_class,
        None,
        [
            f"data.path={_write(tmp_path, rows)}",
            "data.eval_fraction=0",
            f"model.cache_dir={tiny_model_config.cache_dir}",
            f"schedule.batch_size={len(rows)}",
            *extra,
        ],
    )
    tokenizer = load_tokenizer(resolve_model_path(cfg.model))
    data = load_sequences(cfg.data, tokenizer, cfg.run.seed)
    objective = cfg.algorithm.objective if hasattr(cfg, "algorithm") else job.SequenceObjective(name="sft")
    learner = Learner(cfg.learner, cfg.model, AlgorithmConfig(), 1.0, total_steps=1, objective=objective)
    grads: dict[str, torch.Tensor] = {}
    step = learner.backend.step

    def capture() -> float:
        grads.update(
            {n: p.grad.detach().clone() for n, p in learner.backend.model.named_parameters() if p.grad is not None}
        )
        return step()

    learner.backend.step = capture
    result = learner.train_sequences(to_batch(0, data.train, objective.pairs))
    return result.metrics["loss"], grads


def _theirs(trainer) -> tuple[float, dict[str, torch.Tensor]]:
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return float(loss), {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def _common_args(tmp_path: Path) -> dict:
    return {
        "output_dir": str(tmp_path / "trl"),
        "per_device_train_batch_size": ROWS,
        "report_to": [],
        "use_cpu": True,
        "bf16": False,
        "learning_rate": 1e-3,
        "max_steps": 1,
        "dataloader_num_workers": 0,
        "seed": 0,
    }


def _assert_same(ours: tuple[float, dict], theirs: tuple[float, dict]) -> None:
    assert ours[0] == pytest.approx(theirs[0], abs=ATOL)
    assert ours[1].keys() == theirs[1].keys()
    worst = max(float((ours[1][n] - theirs[1][n]).abs().max()) for n in ours[1])
    assert worst < ATOL, worst
    assert max(float(g.abs().max()) for g in ours[1].values()) > 100 * ATOL  # a real gradient


def _model_and_tokenizer(tiny_model_config):
    path = resolve_model_path(tiny_model_config)
    return load_causal_lm(path, "float32"), load_tokenizer(path)


def test_sft_step_equals_trl_sft_trainer(tmp_path: Path, tiny_model_config) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = _rows("configs/data/toy_sft.jsonl", ROWS)  # conversational prompt/completion
    ours = _ours(sft, sft.SftConfig, tmp_path, tiny_model_config, rows, [])
    model, tokenizer = _model_and_tokenizer(tiny_model_config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = SFTTrainer(
            model=model,
            processing_class=tokenizer,
            train_dataset=Dataset.from_list(rows),
            args=SFTConfig(completion_only_loss=True, max_length=512, **_common_args(tmp_path)),
        )
    _assert_same(ours, _theirs(trainer))


def test_simpo_step_equals_trl_cpo_trainer(tmp_path: Path, tiny_model_config) -> None:
    from datasets import Dataset
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    rows = [
        {
            "prompt": f"Name a domain for {p['prompt'][1]['content']}",
            "chosen": " " + p["chosen"][0]["content"],
            "rejected": " " + p["rejected"][0]["content"],
        }
        for p in _rows("configs/data/toy_preference.jsonl", ROWS)
    ]
    ours = _ours(preference, preference.PreferenceConfig, tmp_path, tiny_model_config, rows, ["algorithm.name=simpo"])
    model, tokenizer = _model_and_tokenizer(tiny_model_config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = CPOTrainer(
            model=model,
            processing_class=tokenizer,
            train_dataset=Dataset.from_list(rows),
            args=CPOConfig(
                loss_type="simpo", cpo_alpha=0.0, beta=2.0, simpo_gamma=1.0, max_length=512, **_common_args(tmp_path)
            ),
        )
    _assert_same(ours, _theirs(trainer))


def test_dpo_step_equals_trl_dpo_trainer(tmp_path: Path, tiny_model_config) -> None:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    rows = _rows("configs/data/toy_preference.jsonl", ROWS)  # conversational prompt/chosen/rejected
    ours = _ours(preference, preference.PreferenceConfig, tmp_path, tiny_model_config, rows, ["algorithm.name=dpo"])
    model, tokenizer = _model_and_tokenizer(tiny_model_config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DPOTrainer(
            model=model,
            processing_class=tokenizer,
            train_dataset=Dataset.from_list(rows),
            args=DPOConfig(loss_type=["sigmoid"], beta=0.1, max_length=512, **_common_args(tmp_path)),
        )
    _assert_same(ours, _theirs(trainer))
