"""Which config keys differ between a run directory's recorded config and this invocation's, and
which of those may: a job that continues a run refuses any other difference, since the
continuation would be a different experiment. Pure functions over plain dicts."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

# Keys that may change when a run resumes: they change how it runs, not what it trains.
# Any other difference makes the continuation a different experiment and is refused.
SAFE_ON_RESUME = (
    "run.steps",
    "run.checkpoint_every",
    "run.keep_checkpoints",
    "run.resume",
    "run.save_final",
    "run.max_learner_restarts",
    "run.name",
    "run.output_dir",
    "run.output_root",
    "run.actor_start_timeout_s",
    "wandb.",
    "judge.base_url",
    "judge.endpoints",
    "judge.api_key_env",
    "judge.timeout_s",
    "judge.max_concurrency",
    "judge.requests_per_minute",
    "judge.tokens_per_minute",
    "judge.burst_s",
    "judge.retry",
    "judge.circuit_breaker",
    "judge.check_endpoint",
    "judge.local_server",
    "judge.cache_size",
    "judge.cache_path",
    "judge.budget_usd",  # what the run may spend and what tokens cost, not what it trains
    "judge.price_per_million_input_tokens",
    "judge.price_per_million_output_tokens",
    "judge.max_outage_s",  # how long to wait for the judge, and when to warn: not what is trained
    "judge.alarms",
    "model.cache_dir",
    "rollout.num_workers",
    "rollout.num_cpus_per_worker",
    "rollout.num_gpus_per_worker",
    "rollout.torch_threads",
    "rollout.call_timeout_s",
    "rollout.resources",
    "learner.torch_threads",
    "learner.num_cpus",
    "learner.num_gpus",
    "learner.placement_strategy",
    "pipeline.max_actor_restarts",
    "pipeline.forward_ahead",  # the same step with or without it
    "schedule.eval_every",
    "schedule.epochs",
    "eval.every_steps",  # evaluations draw nothing from the workers' RNGs; what they measure may not change
    # how an engine of reward.engines is reached, never which model answers or how it is asked
    *(
        f"reward.engines.*.{field}"
        for field in (
            "base_url",
            "endpoints",
            "api_key_env",
            "timeout_s",
            "max_concurrency",
            "requests_per_minute",
            "tokens_per_minute",
            "burst_s",
            "retry",
            "circuit_breaker",
            "cache_size",
            "price_per_million_input_tokens",
            "price_per_million_output_tokens",
        )
    ),
)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config dicts as ``a.b.c -> value`` (lists stay values)."""
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def changed_keys(saved: dict, current: dict, may_change: Sequence[str] = SAFE_ON_RESUME) -> list[str]:
    """Config keys whose values differ between ``saved`` (a checkpoint's, a run directory's) and
    ``current`` and that ``may_change`` (keys, ``prefix.``es and ``*`` patterns) does not cover."""
    a, b = flatten(saved), flatten(current)
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return [k for k in differ if not any(_covers(safe, k) for safe in may_change)]


def _covers(safe: str, key: str) -> bool:
    """``safe`` (a key, a ``prefix.``, or a pattern whose ``*`` stands for one name) names ``key`` or a parent of it."""
    if "*" in safe:
        pattern = re.escape(safe).replace(r"\*", r"[^.]+")
        return re.fullmatch(pattern + r"(\..+)?", key) is not None
    return key == safe or key.startswith(safe if safe.endswith(".") else safe + ".")
