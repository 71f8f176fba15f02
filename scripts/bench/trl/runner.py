"""The TRL side of ``scripts/bench/vs_trl.py``: one TRL ``GRPOTrainer`` run, in its own process.

    python -m scripts.bench.trl.runner --model DIR --prompts FILE --base-url URL --steps N --out FILE [--lora]

TRL 1.16 on the CPU, no vLLM: one optimiser step = 2 prompts x 8 samples
(``per_device_train_batch_size`` 16, ``num_generations`` 8, no gradient
accumulation), 32 new tokens at temperature 1 (no top-k/top-p), ``loss_type``
grpo, beta 0, epsilon 0.2, group-scaled rewards, fp32, eager attention, no
gradient checkpointing, and relay's learner defaults for the optimiser (lr,
betas, weight decay, gradient clipping, constant schedule, LoRA shape).

The reward is an async function that asks the judge the request relay's judge
sends (``rewards/judge/prompt.py``: the rubric's system message, the fenced user
message, temperature 0, ``max_tokens`` and the verdict's JSON schema as
``response_format``), all samples of a step at once with ``openai.AsyncOpenAI``,
and scores the verdict with relay's rubric. Like relay it strips ``<think>`` and
scores degenerate answers by rule (``rewards/judge/gate.py``) without a request.

Writes ``--out``: ``{"start": t, "ends": [t1, t2, ...], "step_time": [...],
"judge_requests": n}``: ``time.monotonic()`` (the clock for durations: a wall-clock
jump or a paused machine's catch-up is no step's time) at the start of training and
at the end of each optimiser step (``TrainerCallback.on_step_end``), and TRL's
own logged ``step_time`` of each step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from actors.learner.config import LearnerConfig
from rewards.judge.config import JudgeConfig
from rewards.judge.gate import gate_reason
from rewards.judge.prompt import response_format_for, strip_think, system_message, user_message
from rewards.judge.verdict import parse_verdict

PROMPTS_PER_STEP, GROUP_SIZE, MAX_NEW_TOKENS, TEMPERATURE = 2, 8, 32, 1.0


def make_judge_reward(base_url: str, api_key: str, counts: dict[str, int]):
    """An async TRL reward function scoring each completion with the judge at ``base_url``
    (the request relay's ``JudgeReward`` sends); ``counts["requests"]`` counts HTTP requests."""
    judge = JudgeConfig()
    rubric = judge.rubric_spec()
    system = system_message(rubric)
    response_format = response_format_for(judge.response_format, rubric)
    state: dict[str, object] = {}

    async def one(client, request_text: str, completion: str) -> float | None:
        candidate = strip_think(completion)
        if gate_reason(candidate) is not None:
            return rubric.min_reward
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": user_message(request_text, candidate, judge.max_candidate_chars)},
        ]
        counts["requests"] += 1
        try:
            reply = await client.chat.completions.create(
                model=judge.model,
                messages=messages,
                temperature=judge.temperature,
                max_tokens=judge.max_tokens,
                response_format=response_format,
            )
            return rubric.reward(parse_verdict(reply.choices[0].message.content, rubric, strict=True))
        except Exception:  # noqa: BLE001 - a failed judgement is no score (None), as in relay
            counts["failures"] = counts.get("failures", 0) + 1
            return None

    async def judge_reward(prompts, completions, **kwargs) -> list[float | None]:
        if "client" not in state:  # made in TRL's reward event loop, on first use
            import openai

            state["client"] = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=judge.timeout_s)
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        requests = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
        return list(await asyncio.gather(*(one(state["client"], r, t) for r, t in zip(requests, texts))))

    return judge_reward


def trl_config(output_dir: str, steps: int, seed: int):
    """GRPOConfig with the step shape and loss settings of the relay runs (module docstring)."""
    from trl import GRPOConfig

    learner = LearnerConfig()
    return GRPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=PROMPTS_PER_STEP * GROUP_SIZE,
        gradient_accumulation_steps=1,
        num_generations=GROUP_SIZE,
        max_completion_length=MAX_NEW_TOKENS,
        temperature=TEMPERATURE,
        top_k=0,
        top_p=1.0,
        loss_type="grpo",
        beta=0.0,
        epsilon=0.2,
        scale_rewards="group",
        num_iterations=1,
        learning_rate=learner.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=learner.weight_decay,
        adam_beta1=learner.betas[0],
        adam_beta2=learner.betas[1],
        max_grad_norm=learner.max_grad_norm,
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        disable_tqdm=True,
        seed=seed,
    )


def lora_config():
    """peft LoRA with relay's ``learner.lora`` defaults."""
    from peft import LoraConfig

    lora = LearnerConfig().lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )


def run_trl(model_dir: str, prompts: list[str], base_url: str, api_key: str, steps: int, lora: bool, seed: int = 0):
    """Train ``steps`` optimiser steps; returns the start time, step end times and request count."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    marks: dict[str, Any] = {"ends": [], "step_time": []}  # + "start": the time training began

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            marks["start"] = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            marks["ends"].append(time.monotonic())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "step_time" in logs:  # TRL's own timing of the step, a cross-check
                marks["step_time"].append(float(logs["step_time"]))

    counts = {"requests": 0}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dataset = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])
    with tempfile.TemporaryDirectory(prefix="bench_trl_") as out:
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[make_judge_reward(base_url, api_key, counts)],
            args=trl_config(out, steps, seed),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora_config() if lora else None,
            callbacks=[StepClock()],
        )
        trainer.train()
    return {**marks, "judge_requests": counts["requests"], "judge_failures": counts.get("failures", 0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Hugging Face model directory")
    parser.add_argument("--prompts", required=True, help="jsonl with a 'description' per row")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key-env", default="RELAY_JUDGE_API_KEY")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    key = os.environ.get(args.api_key_env, "none")
    result = run_trl(args.model, [r["description"] for r in rows], args.base_url, key, args.steps, args.lora)
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
