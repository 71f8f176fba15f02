"""``relay init DIR [--gpu]``: a starter for one's own task, written into DIR.

Three files: ``config.yaml`` (every field of the RL job's config with its description as a
comment, ``ray_jobs/config/commented_yaml.py``), ``rubric.yaml`` (a neutral judge rubric: weighted
criteria and a system template with the placeholders ``$criteria``, ``$fences`` and
``$output_format``, no request check) and ``data.jsonl`` (sample prompts in TRL's standard
prompt-only form, ``{"prompt": ...}``). The config points at the other two; it sets no demo
value (no system prompt, no shipped rubric, no eval label field) and names a judge endpoint
to replace. ``--gpu`` takes the model, vLLM, DeepSpeed and pipeline settings of the one-node
GPU recipe (``configs/domain_names_gspo/gpu_1_gspo.yaml``); without it the built-in tiny model on CPU.

Invariants: the written config loads (``ray_jobs.config.experiment.load_config``) to exactly the starter
model; nothing is written when any of the three files exists (one-line error, exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ray_jobs.config.commented_yaml import commented_yaml
from ray_jobs.config.experiment import ExperimentConfig

CONFIG_FILE, RUBRIC_FILE, DATA_FILE = "config.yaml", "rubric.yaml", "data.jsonl"
JUDGE_URL = "http://localhost:8000/v1"
JUDGE_MODEL = "Qwen/Qwen2.5-7B-Instruct"
JUDGE_KEY_ENV = "JUDGE_API_KEY"

GPU_SETTINGS: dict[str, Any] = {
    "run": {"steps": 500, "actor_start_timeout_s": 1800},
    "model": {"path": "Qwen/Qwen2.5-0.5B-Instruct", "dtype": "bfloat16"},
    "rollout": {
        "backend": "vllm",
        "num_workers": 2,
        "num_cpus_per_worker": 2,
        "num_gpus_per_worker": 1,
        "group_size": 8,
        "max_new_tokens": 512,
        "temperature": 1.0,
        "vllm": {"gpu_memory_utilization": 0.85, "max_model_len": 1024, "max_num_seqs": 256},
    },
    "algorithm": {"name": "gspo", "rollout_correction": "truncate"},
    "learner": {
        "backend": "deepspeed",
        "world_size": 2,
        "num_cpus": 2,
        "num_gpus": 1,
        "zero_stage": 2,
        "lr": 1.0e-6,
        "micro_batch_size": 16,
        "gradient_checkpointing": True,
    },
    "pipeline": {"max_staleness": 1, "prompts_per_step": 32, "prompts_per_call": 8},
    "weight_sync": {"transport": "broadcast", "backend": "nccl", "bucket_mb": 256},
}
"""The GPU starter's settings (4 GPUs on one node: two vLLM engines of one GPU, a two-rank
ZeRO-2 learner), those of the GPU recipe except for the task's completion length."""

SAMPLE_PROMPTS = (
    "Explain in two sentences why the sky is blue.",
    "Write a haiku about a cup of coffee on a rainy morning.",
    "Give three tips for writing a clear email to a busy colleague.",
    "What is the difference between a list and a tuple in Python? Answer briefly.",
    "Summarise the rules of chess for a ten-year-old in one short paragraph.",
    "Suggest a name for a bicycle repair shop and say why it works.",
    "How do I boil an egg so that the yolk stays soft?",
    "Describe a sunset to someone who has never seen one, in three sentences.",
)

RUBRIC = """\
# The judge's rubric for your task (relay init). Format: rewards/judge/rubric.py and the docs' judge guide.
# Edit the criteria (name, weight, what the judge assesses; each scored 0-10) and the task
# paragraph of system_template; bump `version` on every change (it is part of the verdict-cache key).
# system_template must keep the placeholders $criteria (the criteria, written by relay),
# $fences (the statement that fenced text is data, not instructions) and $output_format
# (the JSON shape of the verdict); write $$ for a literal dollar sign.
name: {name}
version: v1
description: Starter rubric for your task; say here what it is for.
criteria:
  - name: correctness
    weight: 0.5
    description: Whether the answer is factually right and does what the request asks.
  - name: helpfulness
    weight: 0.3
    description: How useful, specific and complete the answer is for the person who asked.
  - name: concision
    weight: 0.2
    description: Whether the answer is as short as it can be without leaving anything needed out.
system_template: |
  You are an impartial judge. You grade one candidate answer to a request against a weighted rubric.

  The task: the request is a message from a user, and a good candidate answer responds to it
  correctly, helpfully and concisely.

  Rubric (score each criterion from 0 = worst to 10 = best):
  $criteria

  $fences

  $output_format
"""

NOTES = {
    "run.name": "your task: the run directory's name",
    "data.path": "your task: your prompts file (or a hub dataset name)",
    "data.prompt_field": "your task: the field holding each prompt",
    "data.system_prompt": "your task: a system message for the policy, or null",
    "judge.base_url": "your task: your judge's OpenAI-compatible endpoint",
    "judge.model": "your task: the judge model that endpoint serves",
    "judge.api_key_env": "your task: export the judge's API key in this variable",
    "judge.rubric": "your task: what the judge scores",
    "eval.label_field": "your task: null (this rubric has no request check)",
}
"""Trailing comments that mark the fields a starter sets for one's own task."""


class InitError(ValueError):
    """A starter that cannot be written (one line)."""


def starter_config(directory: Path, gpu: bool) -> ExperimentConfig:
    """The starter for a task in ``directory``: the defaults (``gpu``: with ``GPU_SETTINGS``), one's
    own data, rubric and judge endpoint, no demo value. Paths are ``directory`` joined as given;
    the rubric file must exist (the judge section validates it)."""
    raw: dict[str, Any] = {section: dict(values) for section, values in GPU_SETTINGS.items()} if gpu else {}
    own = {
        "run": {"name": _task_name(directory)},
        "data": {"path": str(directory / DATA_FILE), "prompt_field": "prompt", "id_field": "id", "system_prompt": None},
        "judge": {
            "base_url": JUDGE_URL,
            "model": JUDGE_MODEL,
            "api_key_env": JUDGE_KEY_ENV,
            "rubric": str(directory / RUBRIC_FILE),
        },
        "eval": {"label_field": None},
    }
    for section, values in own.items():
        raw.setdefault(section, {}).update(values)
    return ExperimentConfig.model_validate(raw)


def _task_name(directory: Path) -> str:
    """The run's and the rubric's name: the directory's own name."""
    return directory.resolve().name or "my-task"


def _header(directory: Path, gpu: bool) -> list[str]:
    config = directory / CONFIG_FILE
    kind = (
        "GPU: Qwen2.5-0.5B-Instruct on 4 GPUs of one node (2 vLLM engines, a 2-rank DeepSpeed ZeRO-2 learner)."
        if gpu
        else "CPU: the built-in tiny model, to try the whole pipeline on your data with your judge."
    )
    lines = [
        "Starter config for your own task, written by `relay init`.",
        kind,
        f"  relay train --config {config} --dry-run   # check config, data and placement; starts nothing",
        f"  relay train --config {config}             # train; override any value as a.b=value",
        "Fields marked 'your task' are set for your task; every other value is the default, with its",
        "description above it (a line you do not change may be deleted). Paths are relative to the",
        "directory you run relay from. The judge: any OpenAI-compatible endpoint, e.g. the one below is",
        f"`vllm serve {JUDGE_MODEL} --port 8000` (export {JUDGE_KEY_ENV}=EMPTY for a server without keys).",
    ]
    if gpu:
        lines += [
            "Install on the GPU node: your CUDA torch, then pip install -e '.[gpu]'. On a cluster of several nodes",
            "run.output_root and the data and rubric paths must be absolute, on storage every node mounts.",
        ]
    return [*lines, ""]


def write_starter(directory: Path, gpu: bool = False) -> list[Path]:
    """Write the config, rubric and sample data into ``directory`` (created if missing); the files
    written. ``InitError`` before anything is written when one of them exists."""
    files = [directory / name for name in (CONFIG_FILE, RUBRIC_FILE, DATA_FILE)]
    if existing := [str(f) for f in files if f.exists()]:
        verb = "exists" if len(existing) == 1 else "exist"
        raise InitError(
            f"{', '.join(existing)} already {verb}; relay init never overwrites files: choose a new directory"
        )
    if directory.exists() and not directory.is_dir():
        raise InitError(f"{directory} is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    config, rubric, data = files
    try:  # the config names the rubric, which must exist to be validated
        rubric.write_text(RUBRIC.format(name=json.dumps(_task_name(directory))))
        rows = ({"id": f"p{i}", "prompt": text} for i, text in enumerate(SAMPLE_PROMPTS))
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        config.write_text(commented_yaml(starter_config(directory, gpu), _header(directory, gpu), NOTES))
    except BaseException:
        for f in files:
            f.unlink(missing_ok=True)
        raise
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="relay init",
        description="Write a starter config (every field documented), a judge rubric and sample prompts "
        "for your own task into DIR.",
    )
    parser.add_argument("directory", metavar="DIR", help="where to write config.yaml, rubric.yaml and data.jsonl")
    parser.add_argument(
        "--gpu",
        action="store_true",
        help="a GPU starter (Qwen2.5-0.5B-Instruct, vLLM, DeepSpeed) instead of the CPU one (built-in tiny model)",
    )
    args = parser.parse_args(argv)
    directory = Path(args.directory)
    try:
        written = write_starter(directory, args.gpu)
    except (InitError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    config = directory / CONFIG_FILE
    print(f"wrote {', '.join(str(f) for f in written)}")
    print(f"next: put your prompts in {written[2]}, describe your task in {written[1]}, set the judge in {config},")
    print(f"then: relay train --config {config} --dry-run && relay train --config {config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
