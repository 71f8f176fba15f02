"""The command line every job but ``train`` shares (``python -m ray_jobs.sft|preference|evaluate``):
``--config FILE a.b=value ...``, ``--dry-run``, and bad input as ``error: ...`` with exit code 2."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from actors.model.files import ModelFileError
from actors.model.loading import AdapterBaseError
from ray_jobs.config.experiment import ConfigError
from ray_jobs.config.offline import load_job_config
from ray_jobs.config.run_paths import SharedPathError
from ray_jobs.data.prompts import DatasetError
from ray_jobs.dry_run.plan import NodeShape, Plan, add_plan_arguments, dry_run
from ray_jobs.runtime.control import command_exit_code
from ray_jobs.runtime.hub import HubNameError
from ray_jobs.runtime.learner_group import LearnerPlacementError
from ray_jobs.runtime.lifecycle import RunDirectoryError

JOB_ERRORS = (
    AdapterBaseError,
    ConfigError,
    DatasetError,
    HubNameError,
    LearnerPlacementError,
    ModelFileError,
    RunDirectoryError,
    SharedPathError,
)


def job_main(
    prog: str,
    description: str,
    config_class: type[BaseModel],
    run_job,
    argv: list[str] | None,
    errors: tuple[type[BaseException], ...] = JOB_ERRORS,
    load=None,
    plan: Callable[[Any, NodeShape], Plan] | None = None,
) -> int:
    """Parse ``--config FILE a.b=value ...``, run, and map bad input (``errors``) to ``error: ...`` and
    exit code 2; ``load(path, overrides)`` replaces the plain config loader. With ``--dry-run``,
    ``plan(cfg, node)`` builds the plan shown instead of running (``ray_jobs/dry_run/plan.py``)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", help="YAML config (default: the embedded CPU default)")
    parser.add_argument("overrides", nargs="*", help="overrides such as run.steps=10 learner.lr=1e-4")
    if plan is not None:
        add_plan_arguments(parser)
    args = parser.parse_args(argv)
    loader = load or (lambda path, overrides: load_job_config(config_class, path, overrides))
    if plan is not None and args.dry_run:
        return dry_run(args, lambda: loader(args.config, args.overrides), plan, errors)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return command_exit_code(lambda: loader(args.config, args.overrides), run_job, errors)
