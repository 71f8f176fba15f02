"""The dry run of a colocated run (ray_jobs/dry_run/): one GPU for the learner and generation, a vLLM
engine's share added to the learner's estimate, and sleep mode's turns; expected figures by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_plan import dry_run, gpu_lines, refused

from ray_jobs.config.experiment import load_config
from ray_jobs.dry_run.layout import Actor, gpu_peak, turns
from ray_jobs.dry_run.memory import GIB
from ray_jobs.dry_run.model_shapes import ModelShape
from ray_jobs.dry_run.plan import generating_learner

QWEN25_05B = 494_032_768  # parameters (ray_jobs/dry_run/model_shapes.py)
VLLM_ON_A_24GB_CARD = [
    "pipeline.placement=colocated",
    "rollout.backend=vllm",
    "learner.num_gpus=1",
    "learner.gradient_checkpointing=true",
    "model.path=Qwen/Qwen2.5-0.5B-Instruct",
    "rollout.vllm.gpu_memory_utilization=0.5",
]
CARD = ["--gpus-per-node", "1", "--gpu-memory-gib", "24"]
# Generation's phase with sleep: the engine's share 0.5 x 24 GiB, plus what the learner keeps between
# steps (torch, bf16 mixed, full fine-tuning): fp32 weights 4 B and AdamW moments 8 B per parameter,
# and its 1 GiB CUDA context; gradients, activations and log-prob buffers are freed.
GENERATION_GIB = 12 + 12 * QWEN25_05B / GIB + 1  # 18.52


@pytest.fixture(autouse=True)
def _no_ray(dry_run_without_ray: None) -> None:
    """A dry run that tried to start Ray would fail here (conftest's ``dry_run_without_ray``)."""


def test_a_vllm_engine_and_the_learner_add_up_on_one_gpu_and_sleep_is_named(capsys: pytest.CaptureFixture) -> None:
    # micro-batches of 32 sequences without checkpointing: the learner's peak alone is 18.6 GiB
    code, out, err = dry_run("train", [*VLLM_ON_A_24GB_CARD, "learner.gradient_checkpointing=false", *CARD], capsys)
    refused(code, err, "cannot fit node 0 GPU 0")
    (gib, who), *_ = gpu_lines(out).values()
    assert len(gpu_lines(out)) == 1 and who == "rollout worker 0, learner rank 0"
    assert "GPUs: 1 on 1 node(s)" in out and "in shared GPU[0] STRICT_PACK" in out
    found = re.search(r"learner rank 0 .*?-> node 0 GPU 0: ([\d.]+) =", out)
    assert found is not None
    learner = float(found[1])
    assert gib == pytest.approx(12.0 + learner, abs=0.11)  # the engine's share, plus the learner
    # with sleep: the larger of the learner's peak plus 1 GiB the engine keeps asleep, and generation's phase
    assert "with rollout.vllm.sleep_level 1 (or 2)" in err
    assert f"the peak is about {max(learner + 1, GENERATION_GIB):.1f} GiB" in err


def test_with_sleep_the_engine_and_the_learner_take_turns(capsys: pytest.CaptureFixture) -> None:
    code, out, err = dry_run("train", [*VLLM_ON_A_24GB_CARD, "rollout.vllm.sleep_level=2", *CARD], capsys)
    assert code == 0, err
    (gib, _), *_ = gpu_lines(out).values()
    assert gib == pytest.approx(GENERATION_GIB, abs=0.051)
    assert (
        f"while the engine generates: {GENERATION_GIB:.1f} (rollout worker 0 12.0 + learner rank 0 between steps" in out
    )
    assert "while the learner trains:" in out and "rollout worker 0 asleep 1.0" in out
    assert "asleep (level 2) while the learner trains" in out and "plan: fits" in out


def test_colocated_hf_is_one_process_with_one_copy_of_the_weights(capsys: pytest.CaptureFixture) -> None:
    args = ["pipeline.placement=colocated", "learner.num_gpus=1", "model.path=Qwen/Qwen2.5-0.5B-Instruct", *CARD]
    code, out, err = dry_run("train", args, capsys)
    assert code == 0, err
    assert "rollout worker" not in out and list(gpu_lines(out).values()) == [
        (pytest.approx(18.6, abs=0.05), "learner rank 0")
    ]
    assert "generates in this process too (HF, one copy of the weights)" in out
    assert "vLLM" not in out and "rollout: HF generation in the learner's process" in out


# A toy shape: 2 layers, 1 kv head of 4: KV 2 x 2 x 1 x 4 x 2 B = 32 B per bf16 token; one layer keeps
# A = 4h + 2q + 2kv + 4i = 32 + 16 + 8 + 64 = 120 elements per token.
TOY = ModelShape(8, 2, 2, 1, 4, 16, 100, True, False, False, parameters=1992)


@pytest.mark.parametrize(("backend", "freed"), [("torch", 4 + 3 + 1), ("deepspeed", 3 + 1)])
def test_generation_in_the_learner_reuses_what_training_frees(backend: str, freed: int) -> None:
    rank = {"weights": 10.0, "gradients": 4.0, "activations": 3.0, "log-prob buffers": 1.0, "CUDA context": 2.0}
    # 2 sequences of 5 tokens (3 of prompt): KV 32 x 2 x 5 = 320 B, prefill 120 x 2 x 3 x 2 B = 1440 B
    parts, note = generating_learner(rank, TOY, 2, (2, 3, 5), backend)
    assert parts == {**rank, "generation beyond training's": 1760.0 - freed}
    assert "one copy of the weights" in note
    roomy = {**rank, "activations": 5000.0}  # training frees more than a call needs: nothing is added
    assert generating_learner(roomy, TOY, 2, (2, 3, 5), backend)[0] == roomy


def _gpu_pair(sleeps: bool) -> list[Actor]:
    learner = Actor("learner rank 0", {}, 0.5, memory={"state": 6 * GIB, "activations": 4 * GIB}, kept=6 * GIB)
    engine = Actor("rollout worker 0", {}, 0.5, memory={"vLLM share": 12 * GIB}, asleep=1 * GIB, sleeps=sleeps)
    return [engine, learner]


def test_turns_are_the_larger_phase_and_without_sleep_the_sum() -> None:
    assert gpu_peak(_gpu_pair(sleeps=False)) == 22 * GIB  # 12 + 10: both hold their peaks all the time
    assert turns(_gpu_pair(sleeps=False)) is None
    phases = turns(_gpu_pair(sleeps=True))
    assert phases is not None and [b for _, b, _ in phases] == [11 * GIB, 18 * GIB]  # 1 + 10, then 12 + 6
    assert gpu_peak(_gpu_pair(sleeps=True)) == gpu_peak(_gpu_pair(sleeps=False), assume_sleep=True) == 18 * GIB


def _adapter_of(base: str, directory: Path) -> str:
    """A stand-in for an earlier stage's final/: a LoRA adapter's config naming its base."""
    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
    return str(directory)


ONE_GPU_RECIPES = [  # (config, job, card GiB, overrides standing in for an earlier stage's output)
    ("domain_names_gspo/gpu_one_gspo.yaml", "train", 24, {}),
    ("sft_then_grpo_geo/gpu_one_1_sft.yaml", "sft", 24, {}),
    ("sft_then_grpo_geo/gpu_one_2_grpo.yaml", "train", 24, {"model.path": "Qwen/Qwen3-1.7B"}),
    ("simpo_critic_best_of_n/gpu_one_1_critic.yaml", "preference", 15, {}),
    (
        "simpo_critic_best_of_n/gpu_one_2_eval.yaml",
        "evaluate",
        15,
        {"conditions.critic_rs.critic.path": "Qwen/Qwen3-1.7B"},
    ),
]


@pytest.mark.parametrize(("config", "job", "card", "stage"), ONE_GPU_RECIPES, ids=[r[0] for r in ONE_GPU_RECIPES])
def test_the_one_gpu_recipes_fit_their_card(
    config: str, job: str, card: int, stage: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    overrides = [f"{key}={_adapter_of(base, tmp_path / 'final')}" for key, base in stage.items()]
    args = ["--config", f"configs/{config}", *overrides, "--gpus-per-node", "1", "--gpu-memory-gib", str(card)]
    code, out, err = dry_run(job, args, capsys)
    assert code == 0, err
    assert "plan: fits" in out and "cannot be estimated" not in out
    ((gib, _),) = gpu_lines(out).values()
    assert gib <= card and f"GPUs: 1 on 1 node(s) of 1 x {card} GiB" in out


@pytest.mark.parametrize("config", ["domain_names_gspo/gpu_one_gspo.yaml", "sft_then_grpo_geo/gpu_one_2_grpo.yaml"])
def test_the_one_gpu_rl_recipes_share_the_card_and_sleep(config: str) -> None:
    cfg = load_config(f"configs/{config}", ["model.path=Qwen/Qwen3-1.7B"] if "geo" in config else [])
    assert cfg.colocated and cfg.rollout.backend == "vllm" and cfg.rollout.vllm.sleep_level > 0


def test_the_forward_ahead_is_off_while_the_engine_sleeps_so_the_plan_takes_turns(
    capsys: pytest.CaptureFixture,
) -> None:
    """On-policy the learner would run its forward before the driver puts the engine to sleep: with
    sleep it is off ('auto'), the plan takes turns, and asking for it is a one-line error."""
    on_policy = ["pipeline.max_staleness=0", "pipeline.prompts_per_step=8", "learner.micro_batch_size=32"]
    sleeping = [*VLLM_ON_A_24GB_CARD, "rollout.vllm.sleep_level=2", *on_policy]
    assert not load_config(None, sleeping).forward_ahead
    assert load_config(None, [*VLLM_ON_A_24GB_CARD, *on_policy]).forward_ahead  # awake: it runs
    code, out, err = dry_run("train", [*sleeping, *CARD], capsys)
    assert code == 0, err
    assert "while the learner trains:" in out and "forward_ahead: its forward runs" not in out
    code, _, err = dry_run("train", [*sleeping, "pipeline.forward_ahead=true", *CARD], capsys)
    assert code == 2 and "no colocated engine that sleeps (rollout.vllm.sleep_level 0)" in err
