"""Start and stop the development stand-in judge server for a run.

The server (``scripts/judge_server.py``) scores by a transparent heuristic; it
stands in for a real judge model on machines without one. It listens on
127.0.0.1 only and requires the run's API key, which is generated per run
(unless the variable named by ``judge.api_key_env`` is already set).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from rewards.config import JudgeConfig, LocalJudgeServerConfig

_REPO_ROOT = Path(__file__).resolve().parents[1]
_READY = "JUDGE_SERVER_READY port="


class LocalJudgeError(RuntimeError):
    """The local judge server did not start."""


def server_arguments(server: LocalJudgeServerConfig) -> list[str]:
    """The ``scripts.judge_server`` options for ``judge.local_server`` (latency and faults)."""
    args = ["--latency-s", str(server.latency_s), "--latency-jitter-s", str(server.latency_jitter_s),
            "--latency-sigma", str(server.latency_sigma),
            "--fail-rate", str(server.fail_rate), "--fail-status", str(server.fail_status),
            "--malformed-rate", str(server.malformed_rate),
            "--status-rate", ",".join(f"{status}={rate}" for status, rate in sorted(server.status_rates.items())),
            "--hang-rate", str(server.hang_rate), "--hang-s", str(server.hang_s),
            "--empty-rate", str(server.empty_rate), "--flaky-malformed-rate", str(server.flaky_malformed_rate),
            "--seed", str(server.seed)]
    if server.retry_after_s is not None:
        args += ["--retry-after-s", str(server.retry_after_s)]
    return args


@contextlib.contextmanager
def local_judge_server(judge: JudgeConfig, log_path: Path, start_timeout_s: float = 30.0) -> Iterator[str]:
    """Run the stand-in judge for the duration of the block; yields its base URL.

    The server's stderr goes to ``log_path``; its stdout carries only the ready line.
    """
    if not os.environ.get(judge.api_key_env):
        os.environ[judge.api_key_env] = secrets.token_urlsafe(24)
    cmd = [sys.executable, "-m", "scripts.judge_server", "--host", "127.0.0.1", "--port", "0",
           "--api-key-env", judge.api_key_env, "--model", judge.model, *server_arguments(judge.local_server)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("w")
    cmd += ["--parent-pid", str(os.getpid())]  # it exits if the driver dies without stopping it
    proc = subprocess.Popen(cmd, cwd=_REPO_ROOT, stdout=subprocess.PIPE, stderr=log_file, text=True)
    try:
        port = _wait_ready(proc, start_timeout_s, log_path)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_file.close()


def _wait_ready(proc: subprocess.Popen, timeout_s: float, log_path: Path) -> int:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if sel.select(timeout_s):
        line = proc.stdout.readline()
        if line.startswith(_READY):
            return int(line[len(_READY):].split()[0])
    proc.kill()
    proc.wait(timeout=10)
    err = log_path.read_text()[-500:].strip()
    raise LocalJudgeError(f"local judge server did not start: {err or 'no output'} (log: {log_path})")


@contextlib.contextmanager
def judge_for_run(judge: JudgeConfig, run_dir: Path) -> Iterator[tuple[JudgeConfig, dict]]:
    """The judge a run uses, and its endpoints' keys: the stand-in server (started here, for the
    block) when no endpoint is configured. Every key is read here, in the driver's environment,
    and handed to the judge actor; the endpoints are checked before anything else starts
    (``judge.check_endpoint``)."""
    import asyncio

    from rewards.endpoints import resolve_api_keys
    from rewards.judge import JudgeReward

    with contextlib.ExitStack() as stack:
        if judge.uses_local_server:
            url = stack.enter_context(local_judge_server(judge, run_dir / "judge_server.log"))
            judge = judge.model_copy(update={"base_url": url})
        keys = resolve_api_keys(judge)
        if judge.check_endpoint:
            asyncio.run(JudgeReward(judge, keys).check_endpoint())
        yield judge, keys
