"""Where runs write and read on a cluster: run directories under ``run.output_root``, model
paths that name another run's output (``run:<name>/...``), and the check that a Ray cluster
of several nodes is not given paths only the driver's node can see.

A run directory is ``run.output_dir`` when set, else ``<run.output_root>/<run.name>``. A
model path written ``run:<name>/<rest>`` (``model.path``; the evaluation's ``policy`` and
``critic.path``) is ``<run.output_root>/<name>/<rest>``: a two-stage recipe's second stage
names the first stage's ``final/`` by run name, and one ``run.output_root`` setting moves
both. The prefix is replaced when the config is loaded (``with_run_paths``), so every later
reader sees a plain path.

Invariant: on a cluster with more than one alive node, a job refuses a relative run
directory or a relative local model path (``check_shared_paths``): learner ranks write
checkpoints into the run directory and actors load the policy on their own nodes, and a
relative path (inside the driver's working directory, which ``ray job submit`` uploads to a
temporary copy) names a different place, or none, there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RUN_PREFIX = "run:"
"""A model path ``run:<run name>/<rest>`` names a file of another run under ``run.output_root``."""

DEFAULT_OUTPUT_ROOT = "runs"
"""``run.output_root`` unless a config sets it."""


SUBMITTED_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Set in the entrypoint of a job that ``ray job submit`` started (Ray 2.60's job supervisor)."""


class SharedPathError(ValueError):
    """A path a multi-node cluster cannot share (one line, naming the key and the fix)."""


def run_directory(output_dir: str | None, output_root: str, name: str) -> Path:
    """A job's run directory: ``output_dir`` when set, else ``<output_root>/<name>``."""
    return Path(output_dir) if output_dir else Path(output_root) / name


def under_output_root(path: str, output_root: str) -> str:
    """``run:<name>/<rest>`` as ``<output_root>/<name>/<rest>``; any other path unchanged."""
    if not path.startswith(RUN_PREFIX):
        return path
    rest = path[len(RUN_PREFIX) :].lstrip("/")
    if not rest:
        raise ValueError(f"model path {path!r} names no run: write run:<run name>/final (under run.output_root)")
    return str(Path(output_root) / rest)


def with_run_paths(raw: dict[str, Any]) -> dict[str, Any]:
    """A raw config (plain YAML data, overrides applied) with every ``run:`` model path replaced
    under its ``run.output_root``: ``model.path`` and, in an evaluation, each condition's
    ``policy`` and ``critic.path``. Other values are left as they are."""
    run = raw.get("run")
    root = str(run.get("output_root", DEFAULT_OUTPUT_ROOT)) if isinstance(run, Mapping) else DEFAULT_OUTPUT_ROOT
    out = dict(raw)
    model = raw.get("model")
    if isinstance(model, Mapping) and isinstance(model.get("path"), str):
        out["model"] = {**model, "path": under_output_root(model["path"], root)}
    conditions = raw.get("conditions")
    if isinstance(conditions, Mapping):
        out["conditions"] = {name: _condition_paths(cond, root) for name, cond in conditions.items()}
    return out


def _condition_paths(cond: Any, root: str) -> Any:
    """An evaluation condition with its ``policy`` and ``critic.path`` resolved under ``root``."""
    if not isinstance(cond, Mapping):
        return cond
    out = dict(cond)
    if isinstance(cond.get("policy"), str):
        out["policy"] = under_output_root(cond["policy"], root)
    critic = cond.get("critic")
    if isinstance(critic, Mapping) and isinstance(critic.get("path"), str):
        out["critic"] = {**critic, "path": under_output_root(critic["path"], root)}
    return out


def alive_nodes() -> int:
    """Alive nodes of the Ray cluster this process joined."""
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def check_shared_paths(run_dir: Path, model_paths: Mapping[str, str], nodes: int | None = None) -> None:
    """On a cluster of more than one alive node (``nodes``; default: ``ray.nodes()``), a
    ``SharedPathError`` for a relative run directory or a relative model path that exists here (a
    local directory: every node must load it). On one node a relative run directory of a job that
    ``ray job submit`` started (its working directory is a temporary upload) is a warning."""
    nodes = alive_nodes() if nodes is None else nodes
    local = {key: p for key, p in model_paths.items() if not Path(p).is_absolute() and Path(p).exists()}
    if nodes > 1:
        if not run_dir.is_absolute():
            raise SharedPathError(
                f"the run directory {run_dir} is relative, but the Ray cluster has {nodes} nodes whose actors "
                "write and read it: set run.output_root (or run.output_dir) to an absolute path on storage "
                "every node mounts, e.g. run.output_root=/shared/relay/runs"
            )
        for key, path in local.items():
            raise SharedPathError(
                f"{key} {path} is a relative local path, but the Ray cluster has {nodes} nodes that load it: "
                f"give an absolute path on storage every node mounts, or run:<run name>/... under an absolute "
                "run.output_root"
            )
    elif not run_dir.is_absolute() and os.environ.get(SUBMITTED_JOB_ENV):
        log.warning(
            "the run directory %s is relative to this Ray job's working directory (%s), a temporary "
            "upload: set run.output_root to an absolute path to keep the run where a next stage finds it",
            run_dir,
            Path.cwd(),
        )
