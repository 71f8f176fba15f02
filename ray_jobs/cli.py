"""The ``relay`` command: ``relay <command> [arguments]`` runs one of the jobs.

    relay train      --config FILE [a.b=value ...] [--dry-run]   (= python -m ray_jobs.train ...)
    relay sft        ...                                          (= python -m ray_jobs.sft ...)
    relay preference ...                                          (= python -m ray_jobs.preference ...)
    relay evaluate   ...                                          (= python -m ray_jobs.evaluate ...)
    relay init DIR [--gpu]                                        (= python -m ray_jobs.init_task ...)

Invariant: everything after the command goes to that job's ``main(argv)`` unchanged, so a
``relay`` command line and its ``python -m ray_jobs.<job>`` form behave the same (exit code
included). A job's module is imported only when it is the one asked for, so ``relay --help``
starts no torch or Ray.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("ray_jobs.train", "RL fine-tuning (GRPO, GSPO, DAPO, ...) with an LLM judge and reward terms"),
    "sft": ("ray_jobs.sft", "supervised fine-tuning on prompt/completion or chat data"),
    "preference": ("ray_jobs.preference", "SimPO or DPO preference training on chosen/rejected pairs"),
    "evaluate": ("ray_jobs.evaluate", "held-out evaluation of named conditions, with paired statistics"),
    "init": ("ray_jobs.init_task", "write a starter config, rubric and sample data for your own task"),
}
"""Command -> (the job's module, whose ``main(argv) -> int`` runs it; one line of help)."""


def usage() -> str:
    """``relay --help``: the commands, one line each."""
    width = max(map(len, COMMANDS))
    lines = [
        "usage: relay <command> [arguments]",
        "",
        "Ray-based asynchronous RL fine-tuning of LLMs with LLM-as-a-judge rewards.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()),
        "",
        "`relay <command> --help` shows a command's arguments; `relay <command> ...` is the same as",
        "`python -m ray_jobs.<job> ...` (e.g. relay train --config FILE run.steps=10 --dry-run).",
    ]
    return "\n".join(lines)


def _unknown(command: str) -> str:
    close = difflib.get_close_matches(command, list(COMMANDS), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"error: unknown command '{command}' (commands: {', '.join(COMMANDS)}){hint}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``relay <command> [arguments]``; the job's exit code. No command: the usage on stderr
    and exit 2; an unknown one: a one-line error and exit 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(usage(), file=sys.stderr)
        return 2
    command, rest = args[0], args[1:]
    if command in ("-h", "--help", "help"):
        print(usage())
        return 0
    if command == "--version":
        from importlib.metadata import version

        print(f"relay {version('relay')}")
        return 0
    if command not in COMMANDS:
        print(_unknown(command), file=sys.stderr)
        return 2
    job = importlib.import_module(COMMANDS[command][0])
    return int(job.main(rest))


if __name__ == "__main__":
    sys.exit(main())
