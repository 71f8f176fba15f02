"""``--dry-run`` of the four jobs (ray_jobs/dry_run/plan.py): every shipped GPU config passes its own
dry-run, the 4B refiner fits 80 GB cards, and configs that cannot be scheduled or cannot fit
are refused with one line on stderr and exit code 2. No Ray starts, no weights load."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

from ray_jobs.config.evaluation import EvaluateConfig
from ray_jobs.config.experiment import load_config
from ray_jobs.config.offline import load_job_config
from ray_jobs.dry_run.memory import GIB

REPO = Path(__file__).resolve().parents[2]
GPU_CONFIGS = sorted((REPO / "configs").rglob("gpu_*.yaml"))
REFINER = "configs/refiner_grpo/gpu_1_grpo.yaml"


@pytest.fixture(autouse=True)
def _no_ray(dry_run_without_ray: None) -> None:
    """A dry run that tried to start Ray would fail here (conftest's ``dry_run_without_ray``)."""


def own_job(config: Path) -> str:
    """The job a config's header tells users to run it with (its first line: relay <job> --config <it>)."""
    found = re.match(rf"# relay (\w+) --config {re.escape(str(config.relative_to(REPO)))}\n", config.read_text())
    assert found, f"{config.name} names no command"
    return found.group(1)


def dry_run(job: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = importlib.import_module(f"ray_jobs.{job}").main([*argv, "--dry-run"] if "--dry-run" not in argv else argv)
    out, err = capsys.readouterr()
    return code, out, err


def gpu_lines(out: str) -> dict[str, tuple[float, str]]:
    """Per 'node N GPU M': (its estimate in GiB, who is on it)."""
    return {
        m["gpu"]: (float(m["gib"]), m["who"])
        for m in re.finditer(r"^  (?P<gpu>node \d+ GPU \d+): (?P<gib>[\d.]+)\S* .*?\((?P<who>.*)\)$", out, re.M)
    }


@pytest.mark.parametrize("config", GPU_CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_shipped_gpu_config_passes_its_dry_run(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = dry_run(own_job(config), ["--config", str(config.relative_to(REPO))], capsys)
    assert code == 0, err
    assert out.rstrip().splitlines()[-1].startswith("plan: ")
    gpus = gpu_lines(out)
    assert gpus and all(gib <= 80 for gib, _ in gpus.values())


def test_the_4b_refiner_fits_80gb_cards(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = dry_run("train", ["--config", REFINER], capsys)
    assert code == 0, err
    assert "plan: fits" in out and "cannot be estimated" not in out
    gpus = gpu_lines(out)
    learners = [gib for gib, who in gpus.values() if who.startswith("learner rank")]
    engines = [gib for gib, who in gpus.values() if who.startswith("rollout worker")]
    assert len(learners) == 2 and len(engines) == 2 and len(gpus) == 4
    # the optimiser state alone: fp32 master + Adam (12 B) x 4,022,468,096 parameters / 2 ranks (ZeRO-3)
    assert f"optimiser {12 * 4_022_468_096 / 2 / GIB:.1f}" in out
    # ZeRO-3 keeps every log-prob chunk for the backward: 2 x 1024 completion tokens x 151936 x 3 fp32
    assert f"log-prob buffers {3 * 2048 * 151936 * 4 / GIB:.1f}" in out
    assert all(gib < 80 for gib in learners) and engines == [0.85 * 80] * 2


@pytest.mark.parametrize("config", ["domain_names_gspo/gpu_sft_2_grpo.yaml", "sft_then_grpo_geo/gpu_2_grpo.yaml"])
def test_stage_two_estimates_memory_once_stage_one_wrote_its_adapter(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before stage 1 ran, its final/ is missing (a note); once it holds an adapter of Qwen3-1.7B,
    stage 2's plan sizes the learner and the engines from the adapter's base."""
    adapter = tmp_path / "final"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen3-1.7B"}))
    code, out, err = dry_run("train", ["--config", f"configs/{config}", f"model.path={adapter}"], capsys)
    assert code == 0, err
    assert "plan: fits" in out and "1.72 B parameters" in out and "cannot be estimated" not in out


def test_rollout_and_learner_sharing_a_gpu_add_up(capsys: pytest.CaptureFixture[str]) -> None:
    overrides = [
        "rollout.num_workers=1",
        "rollout.num_gpus_per_worker=0.5",
        "rollout.vllm.gpu_memory_utilization=0.5",
        "learner.backend=torch",
        "learner.world_size=1",
        "learner.num_gpus=0.5",
        "weight_sync.backend=auto",
    ]
    code, out, err = dry_run("train", ["--config", "configs/domain_names_gspo/gpu_1_gspo.yaml", *overrides], capsys)
    assert code == 0, err
    (gib, who), *_ = gpu_lines(out).values()
    assert len(gpu_lines(out)) == 1 and who == "rollout worker 0, learner rank 0"
    found = re.search(r"learner rank 0 .*?: ([\d.]+) =", out)
    assert found is not None
    learner = float(found[1])
    assert gib == pytest.approx(40.0 + learner, abs=0.11)  # half of 80 GiB for vLLM, plus the learner


def refused(code: int, err: str, starts: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {starts}"), err


def test_refuses_an_engine_larger_than_a_node(capsys: pytest.CaptureFixture[str]) -> None:
    tp8 = ["rollout.vllm.tensor_parallel_size=8", "rollout.num_gpus_per_worker=8"]
    code, _, err = dry_run("train", ["--config", REFINER, "--gpus-per-node", "4", *tp8], capsys)
    refused(code, err, "cannot schedule rollout engine 0")


def test_refuses_a_fractional_gpu_count_above_one(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = dry_run(
        "sft",
        ["--config", "configs/sft_then_grpo_geo/gpu_1_sft.yaml", "learner.world_size=1", "learner.num_gpus=1.5"],
        capsys,
    )
    refused(code, err, "cannot schedule learner rank 0")


def test_refuses_a_learner_that_cannot_fit(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = dry_run("train", ["--config", REFINER, "--gpu-memory-gib", "24"], capsys)
    refused(code, err, "cannot fit node 0 GPU 0")
    assert "learner rank 0" in err and "24 GiB" in err
    assert "actors (bundle" in out  # the plan is shown with the refusal


def test_refuses_a_vllm_share_without_room_for_one_sequence(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = dry_run("train", ["--config", REFINER, "rollout.vllm.gpu_memory_utilization=0.1"], capsys)
    refused(code, err, "cannot fit rollout worker 0")
    assert "max_model_len 8192" in err


def test_refuses_an_offline_job_that_cannot_fit(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = dry_run(
        "preference", ["--config", "configs/simpo_critic_best_of_n/gpu_1_critic.yaml", "--gpu-memory-gib", "4"], capsys
    )
    refused(code, err, "cannot fit node 0 GPU 0")


def test_refuses_prompt_plus_completion_beyond_max_model_len(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = dry_run("train", ["--config", REFINER, "rollout.max_new_tokens=2048"], capsys)
    refused(code, err, "invalid config value")
    assert "7168" in err and "2048" in err and "max_model_len (8192)" in err


def test_max_model_len_is_checked_by_config_validation_too() -> None:
    from ray_jobs.config.experiment import ConfigError

    with pytest.raises(ConfigError, match=r"9216 exceeds rollout.vllm.max_model_len \(8192\)"):
        load_config(REFINER, ["rollout.max_new_tokens=2048"])
    with pytest.raises(ConfigError, match="exceeds rollout.vllm.max_model_len"):
        load_job_config(
            EvaluateConfig, "configs/simpo_critic_best_of_n/gpu_2_eval.yaml", ["rollout.max_new_tokens=4000"]
        )
    load_config(REFINER, ["rollout.max_new_tokens=2048", "rollout.backend=hf"])  # HF has no such limit


def test_refuses_a_missing_data_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = dry_run("train", ["--config", REFINER, "data.path=configs/data/missing.jsonl"], capsys)
    refused(code, err, "data.path: file configs/data/missing.jsonl does not exist")


def test_a_cpu_config_plans_no_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = dry_run("train", ["--config", "configs/cpu_default.yaml"], capsys)
    assert code == 0, err
    assert "GPUs: 0 on 1 node(s)" in out and not gpu_lines(out)
    assert re.search(r"learner rank 0 .*-> node 0 \(no GPU\): -  \[on CPU\]", out)


def test_tensor_parallel_shards_share_a_node_and_each_holds_the_share(capsys: pytest.CaptureFixture[str]) -> None:
    tp2 = ["rollout.vllm.tensor_parallel_size=2", "rollout.num_gpus_per_worker=2"]
    code, out, err = dry_run("train", ["--config", REFINER, "--gpus-per-node", "3", *tp2], capsys)
    assert code == 0, err
    for engine in (0, 1):
        shards = re.findall(rf"rollout worker {engine} shard \d .*-> node (\d) GPU \d: ([\d.]+)", out)
        assert len(shards) == 2 and shards[0][0] == shards[1][0], out  # one node per engine
        assert [float(gib) for _, gib in shards] == [0.85 * 80] * 2
    assert "GPUs: 6 on 3 node(s) of 3 x 80 GiB" in out  # PACK keeps the two learner ranks together
