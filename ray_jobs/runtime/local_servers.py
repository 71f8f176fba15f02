"""Start and stop the development stand-in servers of a run: the judge's and the engines'.

The stand-in judge (``rewards/stand_in/judge_server.py``) scores by a transparent
heuristic; it stands in for a real judge model on machines without one. An
engine's ``local_server`` (e.g. ``rewards.stand_in.geo_engine``, built on
``rewards/stand_in/server.py``) stands in for a real LLM the same way. Each
listens on 127.0.0.1 only and requires the run's API key, which is generated
per run (unless the variable named by its ``api_key_env`` is already set),
gets ``--parent-pid`` (it exits if the driver dies without stopping it), and
is stopped at the end. Its stdout carries only the ready line
``<NAME>_READY port=<port>``; its stderr goes to a log in the run directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from pydantic import SecretStr

from rewards.config import RewardConfig
from rewards.judge.config import JudgeConfig, LocalJudgeServerConfig

log = logging.getLogger(__name__)
_REPO_ROOT = Path(__file__).resolve().parents[2]
_READY_RE = re.compile(r"^[A-Z][A-Z_]*_READY port=(\d+)")


class LocalJudgeError(RuntimeError):
    """The local judge server did not start."""


def server_arguments(server: LocalJudgeServerConfig) -> list[str]:
    """The ``rewards.stand_in.judge_server`` options for ``judge.local_server`` (latency, faults, biases)."""
    args = [
        "--latency-s",
        str(server.latency_s),
        "--latency-jitter-s",
        str(server.latency_jitter_s),
        "--latency-sigma",
        str(server.latency_sigma),
        "--fail-rate",
        str(server.fail_rate),
        "--fail-status",
        str(server.fail_status),
        "--malformed-rate",
        str(server.malformed_rate),
        "--status-rate",
        ",".join(f"{status}={rate}" for status, rate in sorted(server.status_rates.items())),
        "--hang-rate",
        str(server.hang_rate),
        "--hang-s",
        str(server.hang_s),
        "--empty-rate",
        str(server.empty_rate),
        "--flaky-malformed-rate",
        str(server.flaky_malformed_rate),
        "--seed",
        str(server.seed),
        "--position-bias",
        str(server.position_bias),
        "--length-bias",
        str(server.length_bias),
    ]
    if server.retry_after_s is not None:
        args += ["--retry-after-s", str(server.retry_after_s)]
    if server.outage_after_requests is not None:
        args += ["--outage-after-requests", str(server.outage_after_requests), "--outage-s", str(server.outage_s)]
    return args


@contextlib.contextmanager
def local_server(
    module: str,
    api_key_env: str,
    model: str,
    args: list[str],
    log_path: Path,
    label: str = "local judge server",
    start_timeout_s: float = 30.0,
) -> Iterator[str]:
    """Run ``python -m <module>`` on 127.0.0.1 for the duration of the block; yields its base URL.

    Its stderr goes to ``log_path``; its stdout carries only the ready line.
    ``LocalJudgeError`` (naming ``label`` and the log's tail) when it does not start.
    """
    if not os.environ.get(api_key_env):
        os.environ[api_key_env] = secrets.token_urlsafe(24)
    cmd = [
        sys.executable,
        "-m",
        module,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--api-key-env",
        api_key_env,
        "--model",
        model,
        *args,
        "--parent-pid",
        str(os.getpid()),
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("w")
    proc = subprocess.Popen(cmd, cwd=_REPO_ROOT, stdout=subprocess.PIPE, stderr=log_file, text=True)
    try:
        port = _wait_ready(proc, start_timeout_s, log_path, label)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_file.close()


def local_judge_server(
    judge: JudgeConfig, log_path: Path, start_timeout_s: float = 30.0
) -> contextlib.AbstractContextManager[str]:
    """Run the stand-in judge for the duration of the block; yields its base URL. Logs (warning)
    that it is a stand-in: a rule-based scorer of domain names, not an LLM judge."""
    log.warning(
        "judge: starting the STAND-IN judge (rewards/stand_in/judge_server.py): it scores domain names by rule and is "
        "not an LLM judge; set judge.base_url to use a real one (log: %s)",
        log_path,
    )
    return local_server(
        "rewards.stand_in.judge_server",
        judge.api_key_env,
        judge.model,
        server_arguments(judge.local_server),
        log_path,
        "local judge server",
        start_timeout_s,
    )


def _member_stand_ins(stack: contextlib.ExitStack, judge: JudgeConfig, run_dir: Path) -> JudgeConfig:
    """``judge`` with a stand-in judge started (for the ``stack``) for each ensemble member whose
    ``local_server.enabled`` is true, its URL as the member's ``base_url`` (its key generated as for
    the judge's stand-in, in the member's ``api_key_env`` unless set); log ``judge_server_<name>.log``."""
    from rewards.judge.endpoints import member_configs

    members = []
    for member, config in member_configs(judge):
        if member.local_server is not None and member.local_server.enabled:
            path = run_dir / f"judge_server_{member.name}.log"
            url = stack.enter_context(local_judge_server(config, path))
            member = member.model_copy(update={"base_url": url, "local_server": None})
        members.append(member)
    return judge.model_copy(update={"ensemble": members}) if members else judge


def _wait_ready(proc: subprocess.Popen, timeout_s: float, log_path: Path, label: str) -> int:
    import selectors

    if proc.stdout is None:
        raise ValueError(f"{label}: started without stdout=PIPE, so its ready line cannot be read")
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if sel.select(timeout_s):
        match = _READY_RE.match(proc.stdout.readline())
        if match:
            return int(match.group(1))
    proc.kill()
    proc.wait(timeout=10)
    err = " ".join(log_path.read_text()[-500:].split())
    raise LocalJudgeError(f"{label} did not start: {err or 'no output'} (log: {log_path})")


@contextlib.contextmanager
def rewards_for_run(
    judge: JudgeConfig, reward: RewardConfig, run_dir: Path
) -> Iterator[tuple[JudgeConfig, RewardConfig, dict[str, SecretStr]]]:
    """The judge and reward config a run uses, and every endpoint's key: the stand-in judge
    (``judge.uses_local_server``: the demo without a judge endpoint, or asked for by
    ``judge.local_server.enabled: true``) and each engine's ``local_server`` are started here,
    for the block, and their URLs filled in. Every key (judge and engines) is read here, in the
    driver's environment, and handed to the judge actor; with ``judge.check_endpoint`` every
    endpoint is checked before anything else starts (a one-line error naming the judge or engine)."""
    import asyncio

    from rewards.judge.endpoints import resolve_api_keys, service_api_keys

    with contextlib.ExitStack() as stack:
        if judge.uses_local_server:
            url = stack.enter_context(local_judge_server(judge, run_dir / "judge_server.log"))
            judge = judge.model_copy(update={"base_url": url})
        judge = _member_stand_ins(stack, judge, run_dir)
        engines = dict(reward.engines)
        for name, engine in reward.engines.items():
            if engine.uses_local_server:
                assert engine.local_server is not None
                url = stack.enter_context(
                    local_server(
                        engine.local_server,
                        engine.api_key_env,
                        engine.model,
                        list(engine.local_server_args),
                        run_dir / f"engine_{name}_server.log",
                        f"local server of reward.engines.{name} ({engine.local_server})",
                    )
                )
                engines[name] = engine.model_copy(update={"base_url": url})
        reward = reward.model_copy(update={"engines": engines})
        judge = _unused_judge_dropped(judge, reward)
        if judge.is_remote or judge.ensemble:
            keys = resolve_api_keys(judge, engines=engines)
        else:  # no judge endpoint (own data without a judge term): only the engines' keys
            keys = {
                k: v
                for n, e in engines.items()
                for k, v in service_api_keys(e, os.environ, f"reward.engines.{n}").items()
            }
        if judge.check_endpoint:
            asyncio.run(check_all_endpoints(judge, reward, keys))
        yield judge, reward, keys


async def check_all_endpoints(judge: JudgeConfig, reward: RewardConfig, keys: dict[str, SecretStr]) -> None:
    """``GET /models`` on the judge's and every engine's endpoints (``JudgeUnreachableError``)."""
    from rewards.judge.endpoints import resolve_endpoints
    from rewards.judge.ensemble import build_judge
    from rewards.judge.llm_judge import check_endpoints

    if judge.is_remote or judge.ensemble:  # a run without a judge endpoint has no judge term (the config checks it)
        checked = build_judge(judge, keys)
        try:
            await checked.check_endpoint()
        finally:
            await checked.aclose()
    for name, engine in reward.engines.items():
        endpoints = resolve_endpoints(engine, keys, f"reward.engines.{name}")
        await check_endpoints(endpoints, engine.timeout_s, f"engine {name}")


def _unused_judge_dropped(judge: JudgeConfig, reward: RewardConfig) -> JudgeConfig:
    """``judge`` without its endpoint when no reward term is ``judge`` and its key variables are unset
    (a starter config keeps a judge endpoint after its judge term was dropped): logged, not an error.
    A set key keeps the endpoint, for terms that call it (``ctx.llm("judge")``)."""
    from rewards.judge.endpoints import MissingApiKeyError, service_api_keys

    if not judge.is_remote or any(t.name == "judge" for t in reward.terms):
        return judge
    try:
        service_api_keys(judge, os.environ, "judge")
    except MissingApiKeyError:
        log.warning(
            "reward.terms has no 'judge' term and the judge's key variable is unset: the judge endpoint "
            "is not used (ctx.llm('judge') is unavailable to reward terms)"
        )
        server = judge.local_server.model_copy(update={"enabled": False})
        return judge.model_copy(update={"base_url": None, "endpoints": [], "local_server": server})
    return judge
